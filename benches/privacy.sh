#!/usr/bin/env bash
# The PHI guard's cost: the founding query (cost by month and diagnosis code) over generated
# claims under no policy, a masked role (pseudonymised members, dates to months, a row filter
# of half the states) and an aggregate-only role (small cells counted and suppressed), in one
# run; ratios against no policy. The masks alone are measured too, since the founding query
# reads no member ID (the optimizer drops the unused pseudonym) and the row filter halves the rows.
#   bash benches/privacy.sh [--rows 10000000] [--format parquet|csv] [--runs 3]
# SPILLWAY_BIN measures a given binary instead of building this checkout; SPILLWAY_BENCH_DIR
# (default ~/.cache/spillway/bench) caches the data. Writes benches/results/privacy-<rows>-<format>.md.
# The audit log's cost per statement is the load test's, run with and without it:
#   SPILLWAY_TEST_BIN=$CARGO_TARGET_DIR/release/spillway cargo test --release --test cli thirty_two -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000000
format=parquet
runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "privacy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
spillway_binary

claims_data privacy.sh "$rows" "$format"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$data.toml" "$work/spillway.toml"
cat >> "$work/spillway.toml" <<'EOF'

[privacy]
key_env = "BENCH_PSEUDONYM_KEY"
default_role = "owner"

[privacy.columns.claims]
member_id = "subject"
prescriber_npi = "identifier"
pharmacy_npi = "identifier"
fill_date = "quasi"

[privacy.roles.owner]
unrestricted = true

[privacy.roles.masks.tables.claims]
mask = { member_id = "pseudonym", fill_date = "month" }

[privacy.roles.masked.tables.claims]
mask = { member_id = "pseudonym", fill_date = "month" }
filter = "member_state < 'M'"

[privacy.roles.aggregate]
aggregate_only = true

[privacy.roles.aggregate.tables.claims]
mask = { member_id = "pseudonym", fill_date = "month" }
EOF
export BENCH_PSEUDONYM_KEY="bench-key-$(date +%s)"

sql="SELECT CAST(date_trunc('month', fill_date) AS DATE) AS month, diagnosis_code,
       count(*) AS claims, avg(total_cost) AS mean_cost, stddev(total_cost) AS stddev_cost
FROM claims GROUP BY 1, 2 ORDER BY month, claims DESC, diagnosis_code"
# A second, row-level shape for the masked role: every member's pseudonym and spend.
members="SELECT member_id, count(*) AS fills, sum(total_cost) AS spend FROM claims GROUP BY member_id"

# One timed run: prints "seconds peak_rss_mib rows suppressed".
measure() {
  local role="$1" query="$2"
  (cd "$work" && /usr/bin/time -f '%e %M' -o "$work/time" \
     "$SPILLWAY_BIN" query --role "$role" --stats --format csv "$query" > "$work/out" 2> "$work/err") \
    || { cat "$work/err" >&2; exit 1; }
  local rows suppressed
  rows=$(($(wc -l < "$work/out") - 1))
  suppressed=$(sed -n 's/^suppressed: *\([0-9]*\) groups.*/\1/p' "$work/err")
  read -r seconds kib < "$work/time"
  echo "$seconds $((kib / 1024)) $rows ${suppressed:--}"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

out="benches/results/privacy-$rows-$format.md"
{
  echo "# The PHI guard's cost"
  echo
  echo "$rows claims rows ($format, 8 files), $(nproc) cores, $(date -u +%Y-%m-%d), $("$SPILLWAY_BIN" --version), $build."
  echo "Median of $runs runs each, interleaved; ratio = seconds / seconds with no policy (the owner role)."
  echo
  echo "| query | policy | seconds | ratio | peak RSS MiB | rows | groups suppressed |"
  echo "|---|---|---|---|---|---|---|"
} > "$out"

for name in founding members; do
  query="$sql"; [ "$name" = members ] && query="$members"
  roles="owner masks masked aggregate"; [ "$name" = members ] && roles="owner masks masked"
  declare -A times=() rss=() nrows=() supp=()
  for run in $(seq "$runs"); do
    for role in $roles; do
      read -r s m r x < <(measure "$role" "$query")
      times[$role]+="$s "; rss[$role]="$m"; nrows[$role]="$r"; supp[$role]="$x"
    done
  done
  base=$(echo "${times[owner]}" | tr ' ' '\n' | grep . | median)
  for role in $roles; do
    t=$(echo "${times[$role]}" | tr ' ' '\n' | grep . | median)
    label=$role; [ "$role" = owner ] && label="none (unrestricted)"
    [ "$role" = masks ] && label="masked (pseudonym, month)"
    [ "$role" = masked ] && label="masked + row filter (half the states)"
    [ "$role" = aggregate ] && label="aggregate-only (cells >= 11 members)"
    printf '| %s | %s | %.2f | %.2f | %s | %s | %s |\n' "$name" "$label" "$t" \
      "$(echo "$t / $base" | bc -l)" "${rss[$role]}" "${nrows[$role]}" "${supp[$role]}" >> "$out"
  done
  unset times rss nrows supp
done
cat "$out"
