#!/usr/bin/env bash
# Core engine figures: generator throughput and the founding query under a small memory limit.
#   bash benches/core.sh [ROWS]      (default 10000000; data under $SPILLWAY_BENCH_DIR or ~/.cache/spillway/bench)
# Prints one Markdown table. Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
# SPILLWAY_BIN measures a given binary instead of building this checkout.
if [ -z "${SPILLWAY_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${SPILLWAY_BIN:-$CARGO_TARGET_DIR/release/spillway}"
dir="${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}/core-$rows"
rm -rf "$dir"; mkdir -p "$dir"

timed() { # label, command...: prints "label|seconds|peak RSS MiB"
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$dir/rss" "$@" > "$dir/out" 2> "$dir/err"
  end=$(date +%s.%N)
  printf '%s|%.2f|%.0f\n' "$label" "$(echo "$end - $start" | bc)" "$(echo "$(cat "$dir/rss") / 1024" | bc -l)"
}

echo "| step | seconds | peak RSS MiB | notes |"
echo "|---|---|---|---|"
IFS='|' read -r label secs rss < <(timed gen-csv "$bin" gen claims --rows "$rows" --files 8 --format csv --out "$dir/csv")
echo "| gen claims $rows rows CSV | $secs | $rss | $(echo "$rows / $secs" | bc) rows/s, $(du -sh "$dir/csv" | cut -f1) |"
IFS='|' read -r label secs rss < <(timed gen-parquet "$bin" gen claims --rows "$rows" --files 8 --format parquet --out "$dir/parquet")
echo "| gen claims $rows rows Parquet | $secs | $rss | $(echo "$rows / $secs" | bc) rows/s, $(du -sh "$dir/parquet" | cut -f1) |"
sql="SELECT diagnosis_code, avg(total_cost), stddev(total_cost) FROM claims GROUP BY diagnosis_code"
for limit in 256MiB 64MiB; do
  IFS='|' read -r label secs rss < <(timed "founding-$limit" "$bin" --memory-limit "$limit" query --stats -t "claims=$dir/csv/*.csv" -o "$dir/result.csv" "$sql")
  spilled=$(grep '^spilled:' "$dir/err" | sed 's/spilled: *//')
  echo "| founding query, CSV, --memory-limit $limit | $secs | $rss | spilled: $spilled |"
done
sorted="SELECT * FROM claims ORDER BY member_id, claim_id"
IFS='|' read -r label secs rss < <(timed "sort-256MiB" "$bin" --memory-limit 256MiB query --stats -t "claims=$dir/parquet/*.parquet" -o "$dir/sorted.parquet" "$sorted")
spilled=$(grep '^spilled:' "$dir/err" | sed 's/spilled: *//')
echo "| full sort of every column, Parquet to Parquet, 256MiB | $secs | $rss | spilled: $spilled |"
