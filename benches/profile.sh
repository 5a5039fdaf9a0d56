#!/usr/bin/env bash
# `spillway profile` against DuckDB's `SUMMARIZE` over the same generated claims files (CSV, one
# pass each, same machine, one run): wall seconds and peak RSS of each whole process, from
# /usr/bin/time -v. DuckDB is its Python package (SUMMARIZE reads the files with read_csv).
#   bash benches/profile.sh [--rows 10000000] [--format csv|parquet]
# SPILLWAY_BIN measures a given binary instead of building this checkout (release);
# SPILLWAY_BENCH_PYTHON is an interpreter with duckdb (default: the test venv .ci/run makes);
# SPILLWAY_BENCH_DIR (default ~/.cache/spillway/bench) caches the data.
# Writes benches/results/profile-<rows>-<format>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
format=csv
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "profile.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
spillway_binary
python="${SPILLWAY_BENCH_PYTHON:-$HOME/.cache/spillway/pg-venv/bin/python}"
"$python" -c "import duckdb" || {
  echo "profile.sh: $python lacks duckdb (run .ci/run, or set SPILLWAY_BENCH_PYTHON)" >&2
  exit 2
}

claims_data profile.sh "$rows" "$format"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$data.toml" "$work/spillway.toml"

measure() { # name, command...: prints "seconds peak_mib"
  time_process "$work" "$@"
}

spillway=$(cd "$work" && measure spillway "$SPILLWAY_BIN" profile --format csv claims)
case "$format" in
  csv) reader="read_csv('$data/*.csv')" ;;
  parquet) reader="read_parquet('$data/*.parquet')" ;;
esac
duck=$(measure duckdb "$python" -c "import duckdb; print(duckdb.sql(\"SUMMARIZE SELECT * FROM $reader\").fetchall().__len__())")

read -r s_sec s_rss <<< "$spillway"
read -r d_sec d_rss <<< "$duck"
out="benches/results/profile-$rows-$format.md"
{
  echo "# profile vs DuckDB SUMMARIZE: $rows generated claims ($format, 8 files)"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, Spillway $build; DuckDB $("$python" -c 'import duckdb; print(duckdb.__version__)') (Python). One run each."
  echo
  echo "| tool | seconds | peak RSS (MiB) |"
  echo "|---|---|---|"
  echo "| spillway profile | $s_sec | $s_rss |"
  echo "| duckdb SUMMARIZE | $d_sec | $d_rss |"
  echo
  echo "Spillway / DuckDB time: $(awk -v a="$s_sec" -v b="$d_sec" 'BEGIN {printf "%.2f", a/b}')"
  echo
  echo "Reproduce: \`bash benches/profile.sh --rows $rows --format $format\`"
} > "$out"
cat "$out"
