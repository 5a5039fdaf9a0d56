#!/usr/bin/env bash
# Spillway against DuckDB, Polars and DataFusion on the H2O db-benchmark group-by questions
# (and a few claims queries), per file format and memory limit. The work is in engines.py;
# this script only makes the Python venv and the release binary it needs.
#   bash benches/h2o.sh --rows 10000000 --format parquet,csv --memory-limit none,1GiB
#   bash benches/h2o.sh --help
# SPILLWAY_BIN measures a given binary instead of building this checkout.
# SPILLWAY_BENCH_VENV (default ~/.cache/spillway/bench-venv) holds duckdb, polars, datafusion,
# pyarrow and matplotlib from PyPI; SPILLWAY_BENCH_DIR (default ~/.cache/spillway/bench) the data.
set -euo pipefail
cd "$(dirname "$0")/.."
here=benches

for arg in "$@"; do
  case "$arg" in
    -h|--help) exec python3 "$here/engines.py" --help ;;
  esac
done

venv="${SPILLWAY_BENCH_VENV:-$HOME/.cache/spillway/bench-venv}"
# DataFusion pinned to the major Spillway builds on, so "stock DataFusion" means the same engine.
packages=(duckdb polars "datafusion==55.*" pyarrow matplotlib)
if ! "$venv/bin/python" -c "import duckdb, polars, datafusion, pyarrow, matplotlib" 2>/dev/null; then
  echo "h2o: making the venv $venv (${packages[*]} from PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "${packages[@]}"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
if [ -z "${SPILLWAY_BIN:-}" ]; then
  cargo build --release --quiet
  export SPILLWAY_BIN="$CARGO_TARGET_DIR/release/spillway"
fi
if [ ! -x "$SPILLWAY_BIN" ]; then
  echo "h2o: no spillway binary at $SPILLWAY_BIN (SPILLWAY_BIN must name an executable file)" >&2
  exit 2
fi

exec "$venv/bin/python" "$here/engines.py" "$@"
