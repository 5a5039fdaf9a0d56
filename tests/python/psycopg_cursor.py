"""psycopg 3 server-side (named) cursor: rows arrive in batches of FETCH FORWARD n.

Usage: python psycopg_cursor.py PORT BATCH. Prints one JSON object; exits non-zero on error.
"""
import json
import sys

import psycopg

port, batch = sys.argv[1], int(sys.argv[2])
with psycopg.connect(f"host=127.0.0.1 port={port} user=cursor dbname=spillway") as connection:
    with connection.cursor(name="claims_by_id") as cursor:
        cursor.execute("SELECT claim_id FROM claims ORDER BY claim_id")
        batches = []
        ids = []
        while True:
            rows = cursor.fetchmany(batch)
            if not rows:
                break
            batches.append(len(rows))
            ids.extend(row[0] for row in rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM claims WHERE days_supply >= %s", (30,))
        (at_least_30,) = cursor.fetchone()
print(json.dumps({"batches": batches, "ids": ids, "at_least_30": at_least_30}))
