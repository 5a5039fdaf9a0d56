"""psycopg 3 as a masked role: every query shape, a server-side cursor, bound parameters.

Usage: python psycopg_privacy.py PORT USER PASSWORD PLAN. Prints one JSON object whose values
are every row each shape returned, as text; exits non-zero on error.
"""
import json
import sys

import psycopg

port, user, password, plan = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
shapes = {
    "star": ("SELECT * FROM claims", None),
    "cte": ("WITH m AS (SELECT member_id FROM claims) SELECT member_id FROM m", None),
    "join": (
        "SELECT a.member_id, b.claim_id FROM claims a JOIN claims b ON a.claim_id = b.claim_id",
        None,
    ),
    "union": ("SELECT member_id FROM claims UNION SELECT member_id FROM claims", None),
    "cast": ("SELECT CAST(member_id AS VARCHAR) || '!' FROM claims", None),
    "window": (
        "SELECT member_id, row_number() OVER (PARTITION BY member_id ORDER BY claim_id) FROM claims",
        None,
    ),
    "parameter": ("SELECT member_id, plan_id FROM claims WHERE plan_id = %s", (plan,)),
}
out = {}
with psycopg.connect(
    f"host=127.0.0.1 port={port} user={user} password={password} dbname=spillway"
) as connection:
    for name, (sql, params) in shapes.items():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            out[name] = [[str(v) for v in row] for row in cursor.fetchall()]
    with connection.cursor(name="masked_cursor") as cursor:
        cursor.execute("SELECT member_id FROM claims ORDER BY claim_id")
        rows = []
        while True:
            batch = cursor.fetchmany(500)
            if not batch:
                break
            rows.extend([str(v) for v in row] for row in batch)
        out["server_side_cursor"] = rows
print(json.dumps(out))
