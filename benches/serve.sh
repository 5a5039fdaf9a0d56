#!/usr/bin/env bash
# The dashboard server: one dashboard query (the founding example, cost by diagnosis code and
# month) over the wire with psql, cold and then cached, on generated claims.
#   bash benches/serve.sh [--rows 10000000] [--format csv|parquet] [--runs 3]
# SPILLWAY_BIN measures a given binary instead of building this checkout; SPILLWAY_BENCH_DIR
# (default ~/.cache/spillway/bench) caches the data. Writes benches/results/serve-<rows>-<format>.md.
# The load test (32 clients x 200 queries) is a test; its figures for a release binary:
#   SPILLWAY_TEST_BIN=$CARGO_TARGET_DIR/release/spillway cargo test --test cli thirty_two -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
format=csv
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "serve.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
spillway_binary
command -v psql >/dev/null || { echo "serve.sh: needs psql (postgresql-client)" >&2; exit 2; }

claims_data serve.sh "$rows" "$format"

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$data.toml" "$work/spillway.toml"
(cd "$work" && exec "$SPILLWAY_BIN" serve --listen 127.0.0.1:0 > "$work/out" 2> "$work/log") &
pid=$!
for _ in $(seq 200); do
  grep -q 'postgres://' "$work/out" 2>/dev/null && break
  sleep 0.1
done
port=$(sed -n 's|.*postgres://127.0.0.1:\([0-9]*\).*|\1|p' "$work/out")
[ -n "$port" ] || { echo "serve.sh: the server did not start:" >&2; cat "$work/log" >&2; exit 1; }
conn="host=127.0.0.1 port=$port user=bench dbname=spillway sslmode=disable"

sql="SELECT CAST(date_trunc('month', fill_date) AS DATE) AS month, diagnosis_code,
       count(*) AS claims, avg(total_cost) AS mean_cost, stddev(total_cost) AS stddev_cost
FROM claims GROUP BY 1, 2 ORDER BY month, claims DESC, diagnosis_code"

out="benches/results/serve-$rows-$format.md"
{
  echo "# Dashboard query over the wire: cold, then cached"
  echo
  echo "$rows claims rows ($format, 8 files), \`psql\` on loopback, $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "Query: the founding example (claims, mean and stddev of total cost by month and diagnosis code)."
  echo
  echo "| run | seconds | rows | cache |"
  echo "|---|---|---|---|"
} > "$out"
for run in $(seq "$runs"); do
  start=$(date +%s.%N)
  n=$(psql -X -A -t -d "$conn" -c "$sql" | wc -l)
  end=$(date +%s.%N)
  hits=$(psql -X -A -t -F , -d "$conn" -c "SHOW spillway_stats" | sed -n 's/^cache_hits,//p')
  kind=$([ "$run" = 1 ] && echo "cold (miss)" || echo "cached (hits so far: $hits)")
  printf '| %s | %.3f | %s | %s |\n' "$run" "$(echo "$end - $start" | bc)" "$n" "$kind" >> "$out"
done
echo >> "$out"
echo "Peak RSS of the server: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)." >> "$out"
cat "$out"
