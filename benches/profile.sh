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

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
if [ -z "${SPILLWAY_BIN:-}" ]; then
  cargo build --release --quiet
  SPILLWAY_BIN="$CARGO_TARGET_DIR/release/spillway"
fi
build="release build"
case "$SPILLWAY_BIN" in
  */debug/*) build="debug build (dependencies at opt-level 2, Spillway's own code at 0)" ;;
esac
python="${SPILLWAY_BENCH_PYTHON:-$HOME/.cache/spillway/pg-venv/bin/python}"
"$python" -c "import duckdb" || {
  echo "profile.sh: $python lacks duckdb (run .ci/run, or set SPILLWAY_BENCH_PYTHON)" >&2
  exit 2
}

data="${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}/claims-$rows-$format"
if [ ! -d "$data" ] || [ ! -f "$data.toml" ]; then
  echo "profile.sh: generating $rows claims ($format) in $data" >&2
  rm -rf "$data"
  mkdir -p "$(dirname "$data")"
  "$SPILLWAY_BIN" gen claims --rows "$rows" --files 8 --format "$format" --out "$data" --seed 42 \
    --print-config > "$data.toml.tmp"
  mv "$data.toml.tmp" "$data.toml"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$data.toml" "$work/spillway.toml"

measure() { # name, command...: prints "seconds peak_mib"
  local name="$1"; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.out"
  local seconds rss
  seconds=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$work/$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$work/$name.time")
  echo "$seconds $rss"
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
