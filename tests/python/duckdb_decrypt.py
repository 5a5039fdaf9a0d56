"""Read an encrypted Parquet file with DuckDB: with the key (footer_key), and without it.

Usage: python duckdb_decrypt.py FILE KEY. Prints one JSON object: the rows read with the key,
and the error DuckDB gives without it.
"""
import json
import sys

import duckdb

path, key = sys.argv[1], sys.argv[2]
connection = duckdb.connect()
connection.execute(f"PRAGMA add_parquet_key('spillway', '{key}')")
rows = connection.execute(
    "SELECT plan_id, n, paid FROM read_parquet(?, encryption_config = {footer_key: 'spillway'}) "
    "ORDER BY plan_id",
    [path],
).fetchall()
try:
    duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchall()
    without = None
except Exception as error:  # noqa: BLE001 - any refusal will do; the test checks there is one
    without = str(error)
print(json.dumps({"rows": [[str(v) for v in row] for row in rows], "without_key": without}))
