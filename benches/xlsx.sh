#!/usr/bin/env bash
# Writing .xlsx: `spillway query -o FILE.xlsx` (rust_xlsxwriter, constant memory, streamed from
# the query) against pandas + openpyxl (`DataFrame.to_excel(engine="openpyxl")`, the usual Python
# way) writing the same rows and columns of generated claims, both with a frozen header row.
# Wall seconds and peak RSS of each whole process, from /usr/bin/time -v; pandas' to_excel call
# alone is timed too (its process also reads the rows from CSV first).
#   bash benches/xlsx.sh [--rows 1000000] [--runs 1]
# SPILLWAY_BIN measures a given binary instead of building this checkout (release);
# SPILLWAY_BENCH_PYTHON is an interpreter with pandas and openpyxl (default: the test venv that
# .ci/run makes); SPILLWAY_BENCH_DIR (default ~/.cache/spillway/bench) caches the data.
# Writes benches/results/xlsx-<rows>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=1000000
runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "xlsx.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$rows" -gt 1048575 ]; then
  echo "xlsx.sh: an Excel sheet holds 1,048,575 rows under its header; --rows $rows is more" >&2
  exit 2
fi

. benches/lib.sh
spillway_binary
python="${SPILLWAY_BENCH_PYTHON:-$HOME/.cache/spillway/pg-venv/bin/python}"
"$python" -c "import pandas, openpyxl" || {
  echo "xlsx.sh: $python lacks pandas or openpyxl (run .ci/run, or set SPILLWAY_BENCH_PYTHON)" >&2
  exit 2
}

claims_data xlsx.sh "$rows" parquet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$data.toml" "$work/spillway.toml"
# Eight columns of every kind the writer types: integers, text codes, a date, decimals.
sql="SELECT claim_id, member_id, fill_date, ndc, days_supply, quantity, copay, total_cost
FROM claims"
# pandas reads the same rows from CSV (untimed), with the codes as text and dates as dates.
(cd "$work" && "$SPILLWAY_BIN" query --quiet -o rows.csv "$sql")

# Run a command under /usr/bin/time -v; prints "seconds peak_rss_mib" (its output: $work/run.out).
timed() {
  time_process "$work" run "$@"
}

spillway_run() {
  (cd "$work" && timed "$SPILLWAY_BIN" query --quiet -o spillway.xlsx "$sql")
}

pandas_run() {
  (cd "$work" && timed "$python" - <<'EOF'
import time
import pandas
frame = pandas.read_csv("rows.csv", dtype={"member_id": str, "ndc": str}, parse_dates=["fill_date"])
started = time.perf_counter()
frame.to_excel("pandas.xlsx", index=False, engine="openpyxl", freeze_panes=(1, 0))
print(f"{time.perf_counter() - started:.2f}")
EOF
  )
}

# The used range of a workbook's first sheet, from its XML (both must be A1:H<rows + 1>).
dimension() {
  "$python" -c '
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("xl/worksheets/sheet1.xml") as s:
    print(re.search(r"<dimension ref=\"([^\"]+)\"", s.read(4096).decode()).group(1))' "$1"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

s_times="" p_times="" p_write=""
for run in $(seq "$runs"); do
  read -r s s_rss < <(spillway_run)
  s_times+="$s "
  read -r p p_rss < <(pandas_run)
  p_times+="$p "
  p_write+="$(cat "$work/run.out") "
done
expected="A1:H$((rows + 1))"
for file in spillway.xlsx pandas.xlsx; do
  got=$(dimension "$work/$file")
  [ "$got" = "$expected" ] || { echo "xlsx.sh: $file holds $got, expected $expected" >&2; exit 1; }
done
s_median=$(echo "$s_times" | tr ' ' '\n' | grep . | median)
p_median=$(echo "$p_times" | tr ' ' '\n' | grep . | median)
w_median=$(echo "$p_write" | tr ' ' '\n' | grep . | median)

out="benches/results/xlsx-$rows.md"
{
  echo "# Writing .xlsx: Spillway against pandas + openpyxl"
  echo
  echo "$rows generated claims rows, 8 columns (claim_id, member_id, fill_date, ndc, days_supply,"
  echo "quantity, copay, total_cost), $(nproc) cores, $(date -u +%Y-%m-%d), $("$SPILLWAY_BIN" --version), $build;"
  echo "$("$python" -c 'import sys, pandas, openpyxl; print(f"Python {sys.version.split()[0]}, pandas {pandas.__version__}, openpyxl {openpyxl.__version__}")')."
  echo "Median of $runs run(s) each; seconds and peak RSS of the whole process (/usr/bin/time -v)."
  echo "Spillway reads the Parquet files and streams the rows into the workbook; the pandas process"
  echo "reads the same rows from CSV, then calls to_excel (its own time in the last column)."
  echo "Both files hold $expected (header + $rows rows) with the header frozen."
  echo
  echo "| writer | seconds | peak RSS MiB | file MiB | to_excel seconds |"
  echo "|---|---|---|---|---|"
  printf '| spillway query -o FILE.xlsx | %s | %s | %.1f | - |\n' "$s_median" "$s_rss" \
    "$(echo "$(stat -c %s "$work/spillway.xlsx") / 1048576" | bc -l)"
  printf '| pandas to_excel (openpyxl) | %s | %s | %.1f | %s |\n' "$p_median" "$p_rss" \
    "$(echo "$(stat -c %s "$work/pandas.xlsx") / 1048576" | bc -l)" "$w_median"
  echo
  echo "Reproduce: \`bash benches/xlsx.sh --rows $rows --runs $runs\`"
} > "$out"
cat "$out"
