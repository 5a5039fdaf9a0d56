#!/usr/bin/env bash
# Incremental reports and dashboards. Twelve monthly files of generated claims (CSV, --rows rows
# each, one month of fills apiece), each report run once to store its per-file states; then a
# thirteenth month arrives. For four reports from queries/, the run after it (twelve stored
# states merged, one file read) against `report run --full` of the same report on the same 13
# files: wall seconds and peak RSS (/usr/bin/time -v), bytes read (`--stats`: bytes fetched from
# the files and the states). Then a dashboard query through `serve` (psql): before the file
# arrives (storing states), after it (merging them), and the same SQL by `spillway query` over
# the 13 files (a full recompute, same engine).
#   bash benches/incremental.sh [--rows 5000000]
# SPILLWAY_BIN measures a given binary instead of building this checkout (release);
# SPILLWAY_BENCH_DIR (default ~/.cache/spillway/bench) caches the data.
# Writes benches/results/incremental-<rows>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

rows=5000000
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "incremental.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
spillway_binary
command -v psql >/dev/null || { echo "incremental.sh: needs psql (postgresql-client)" >&2; exit 2; }

data="${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}/monthly-$rows"
months="2024-01 2024-02 2024-03 2024-04 2024-05 2024-06 2024-07 2024-08 2024-09 2024-10 2024-11 2024-12 2025-01"
mkdir -p "$data"
seed=1
for month in $months; do
  if [ ! -f "$data/claims-$month.csv" ]; then
    echo "incremental.sh: generating $rows claims for $month in $data" >&2
    rm -rf "$data/tmp"
    "$SPILLWAY_BIN" gen claims --rows "$rows" --files 1 --format csv --out "$data/tmp" \
      --seed "$seed" --start "$month-01" --days 28 --print-config > "$data/table.toml.tmp"
    mv "$data/tmp"/*.csv "$data/claims-$month.csv"
    mv "$data/table.toml.tmp" "$data/table.toml"
  fi
  seed=$((seed + 1))
done

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/claims" "$work/queries"
sed "s|^location = .*|location = \"claims/*.csv\"|" "$data/table.toml" > "$work/spillway.toml"
printf '\n[reports]\nstate_dir = "state"\n' >> "$work/spillway.toml"
# Monthly spend by plan and state has the most groups (month x 4,800 plans x 56 states): the
# largest states, next to the files they summarise.
reports="cost_by_diagnosis_monthly generic_dispensing_rate days_supply_distribution monthly_spend_by_plan_state"
for report in $reports; do cp "queries/$report.sql" "$work/queries/"; done
# Hard links: the same files, no copies.
for month in $months; do
  [ "$month" = 2025-01 ] || ln "$data/claims-$month.csv" "$work/claims/"
done

# Every file in the page cache first, so that no run pays for the disk and the others not.
cat "$data"/claims-*.csv > /dev/null

measure() { # name, command...: prints "seconds peak_mib fetched_bytes"
  local name="$1" timed fetched
  timed=$(cd "$work" && time_process "$work" "$@")
  fetched=$(sed -n 's/^files scanned:.*; \(.*\) fetched in.*/\1/p' "$work/$name.err" | head -1)
  echo "$timed ${fetched// /}"
}

out="$repo/benches/results/incremental-$rows.md"
{
  echo "# Incremental reports: 12 monthly files of $rows claims, then a 13th"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, Spillway $build. CSV files of $(du -m "$data/claims-2024-01.csv" | cut -f1) MiB each; one run of each, page cache warm (the files were read just before)."
  echo "\"after\" is the scheduled run once the 13th file arrived (12 months from stored states); \"full\" is \`report run --full\` on the same 13 files. Bytes read = bytes fetched from files and states (\`--stats\`)."
  echo
  echo "| report | first run (12 files, builds states) s | after: s | after: bytes read | after: peak RSS MiB | full: s | full: bytes read | full: peak RSS MiB | speed-up | states line |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$out"

for report in $reports; do
  read -r first_s _ _ <<< "$(measure "$report-first" "$SPILLWAY_BIN" report run "$report" --at 2024-12-31 --stats)"
  echo "$report $first_s" >> "$work/first"
done
ln "$data/claims-2025-01.csv" "$work/claims/"
for report in $reports; do
  first_s=$(awk -v r="$report" '$1 == r {print $2}' "$work/first")
  read -r inc_s inc_rss inc_bytes <<< "$(measure "$report-inc" "$SPILLWAY_BIN" report run "$report" --at 2025-01-31 --stats)"
  states=$(sed -n 's/^states: *//p' "$work/$report-inc.err")
  read -r full_s full_rss full_bytes <<< "$(measure "$report-full" "$SPILLWAY_BIN" report run "$report" --at 2025-02-01 --full --stats)"
  cmp -s "$work/reports/$report/2025-01-31.csv" "$work/reports/$report/2025-02-01.csv" \
    || echo "incremental.sh: $report: the outputs differ (floats may differ in the last digits)" >&2
  speedup=$(awk -v a="$full_s" -v b="$inc_s" 'BEGIN {printf "%.1f×", a / b}')
  echo "| $report | $first_s | $inc_s | $inc_bytes | $inc_rss | $full_s | $full_bytes | $full_rss | $speedup | $states |" >> "$out"
done

# The dashboard: the server sees 12 months, a query stores states, the 13th month arrives,
# the same query again (the cache misses: a file changed) merges them. Then the same query on
# a server with `[server] incremental = false` (a full recompute over the wire).
rm "$work/claims/claims-2025-01.csv"
rm -rf "$work/state/serve"
start_server() {
  rm -f "$work/serve.out"
  (cd "$work" && exec "$SPILLWAY_BIN" serve --listen 127.0.0.1:0 > "$work/serve.out" 2>> "$work/serve.log") &
  server_pid=$!
  for _ in $(seq 100); do grep -q postgres:// "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  port=$(sed -n 's|.*postgres://127.0.0.1:\([0-9]*\).*|\1|p' "$work/serve.out")
  [ -n "$port" ] || { echo "incremental.sh: the server did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
  conn="host=127.0.0.1 port=$port user=bench dbname=spillway sslmode=disable"
}
start_server
sql="SELECT CAST(date_trunc('month', fill_date) AS DATE) AS month, diagnosis_code, count(*) AS claims, avg(total_cost) AS mean_cost, stddev(total_cost) AS stddev_cost FROM claims GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
timed_psql() {
  local start end
  start=$(date +%s.%N)
  psql -X -A -t -d "$conn" -c "$sql" > "$work/$1.rows"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}'
}
before=$(timed_psql before)
ln "$data/claims-2025-01.csv" "$work/claims/"
after=$(timed_psql after)
read -r query_s query_rss query_bytes <<< "$(measure query-full "$SPILLWAY_BIN" query --stats --format csv "$sql")"
states=$(grep -o 'states=[^"]*incremental[^"]*' "$work/serve.log" | tail -1 | sed 's/^states=//')
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status")
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
printf '\n[server]\nincremental = false\n' >> "$work/spillway.toml"
start_server
full_served=$(timed_psql full)
cmp -s "$work/after.rows" "$work/full.rows" \
  || echo "incremental.sh: the served answers differ (floats may differ in the last digits)" >&2
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
{
  echo
  echo "## A dashboard query through \`serve\` (cost by diagnosis and month, psql)"
  echo
  echo "| 12 months, first query (stores states) s | after the 13th month arrives s | full recompute over the wire (\`[server] incremental = false\`) s | speed-up | full by \`spillway query\` to a file s | server peak RSS MiB |"
  echo "|---|---|---|---|---|---|"
  echo "| $before | $after | $full_served | $(awk -v a="$full_served" -v b="$after" 'BEGIN {printf "%.1f×", a / b}') | $query_s | $rss |"
  echo
  echo "Server log after the 13th month: \`$states\`. \`spillway query\` read $query_bytes (peak RSS $query_rss MiB)."
  echo
  echo "Reproduce: \`bash benches/incremental.sh --rows $rows\`."
} >> "$out"
cat "$out"
