"""Superset's path: SQLAlchemy 2 with psycopg2 connects, reflects the tables, runs a query.

Usage: python sqlalchemy_reflect.py PORT. Prints one JSON object; exits non-zero on any error.
"""
import json
import sys

import sqlalchemy as sa

port = sys.argv[1]
engine = sa.create_engine(f"postgresql+psycopg2://superset@127.0.0.1:{port}/spillway")
inspector = sa.inspect(engine)
tables = sorted(inspector.get_table_names())
columns = [(c["name"], str(c["type"])) for c in inspector.get_columns("claims")]
claims = sa.Table("claims", sa.MetaData(), autoload_with=engine)
with engine.connect() as connection:
    version = connection.dialect.server_version_info
    per_plan = connection.execute(
        sa.select(claims.c.plan_id, sa.func.count().label("n"))
        .group_by(claims.c.plan_id)
        .order_by(claims.c.plan_id)
    ).all()
print(
    json.dumps(
        {
            "tables": tables,
            "columns": columns,
            "server_version": list(version),
            "per_plan": [[plan, n] for plan, n in per_plan],
        }
    )
)
