#!/usr/bin/env bash
# What running on a Ballista cluster costs on one machine: H2O 1e7 q1-q10 and the founding
# claims query (claims, mean and standard deviation of cost per diagnosis and month) on 10M
# claims rows, each in this process, on a cluster of one executor and on one of two (scheduler
# and executors as separate processes on 127.0.0.1), the same Parquet files; and the fixed cost
# of a small query (SELECT count(*) over 8 small files). Two cores cannot show a speed-up: this
# measures overhead. Prints a Markdown report (seconds: median of --reps runs; peak RSS of
# every process) and writes it to benches/results/ when --out is given.
#   SPILLWAY_BIN=target/release/spillway bash benches/cluster.sh [--reps 3] [--out FILE]
# Data comes from benches/h2o.sh's cache ($SPILLWAY_BENCH_DIR, default ~/.cache/spillway/bench):
# run `bash benches/h2o.sh --rows 10000000 --format parquet --claims-rows 10000000` once first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:?"set SPILLWAY_BIN to a release build of spillway"}
data=${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}
reps=3; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
h2o=$data/h2o-10000000-100-parquet
claims=$data/claims-10000000-parquet
for dir in "$h2o" "$claims"; do
  [ -d "$dir" ] || { echo "cluster.sh: no $dir (run benches/h2o.sh first)" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
stop_cluster() { for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
                 for pid in "${pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done; pids=(); }
trap 'stop_cluster; rm -rf "$work"' EXIT
memory=4GiB
"$bin" gen h2o --rows 80000 --groups 100 --files 8 --format parquet --out "$work/small" -q >/dev/null

# id<TAB>table<TAB>sql, from the benchmark's own question list.
questions=$(python3 - <<'PY'
import sys
sys.path.insert(0, "benches")
import engines
for q in engines.H2O_QUESTIONS:
    print(f"{q.id}\tx\t{q.sql}")
print("founding\tc\tSELECT CAST(date_trunc('month', fill_date) AS DATE) AS month, diagnosis_code, "
      "count(*) AS claims, avg(total_cost) AS mean_cost, stddev(total_cost) AS sd_cost "
      "FROM c GROUP BY 1, 2")
print("count8\ts\tSELECT count(*) FROM s")
PY
)

# Peak RSS (MiB) of a running process, from the kernel's high-water mark.
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

start_cluster() {  # $1: executors
  local port=$((52000 + RANDOM % 5000))
  "$bin" cluster scheduler --listen "127.0.0.1:$port" >"$work/scheduler.log" 2>&1 & pids+=($!)
  scheduler="df://127.0.0.1:$port"
  for i in $(seq "$1"); do
    "$bin" --memory-limit "$memory" --workers 2 cluster executor --scheduler "$scheduler" \
      --flight-port $((port + 2 * i)) --grpc-port $((port + 2 * i + 1)) \
      --work-dir "$work/executor-$i" >"$work/executor-$i.log" 2>&1 & pids+=($!)
  done
  for _ in $(seq 100); do
    "$bin" cluster status --cluster "$scheduler" --min-executors "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster.sh: the cluster did not come up" >&2; cat "$work"/*.log >&2; exit 1
}

declare -A seconds rss
run_config() {  # $1: label, rest: extra flags
  local label=$1; shift
  while IFS=$'\t' read -r id table sql; do
    local location
    case $table in x) location="$h2o/*.parquet" ;; c) location="$claims/*.parquet" ;; s) location="$work/small/*.parquet" ;; esac
    local times=() peak=0
    for _ in $(seq "$reps"); do
      /usr/bin/time -f "%e %M" -o "$work/time" "$bin" --memory-limit "$memory" --workers 2 "$@" \
        query -t "$table=$location" -o "$work/out-$label-$id.parquet" "$sql" 2>"$work/err" \
        || { echo "cluster.sh: $label $id failed:" >&2; cat "$work/err" >&2; exit 1; }
      read -r s k <"$work/time"
      times+=("$s"); [ "$k" -gt "$peak" ] && peak=$k
    done
    seconds[$label,$id]=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (reps + 1) / 2 ))p")
    rss[$label,$id]=$((peak / 1024))
  done <<<"$questions"
}

run_config local
node_rss=()
for executors in 1 2; do
  start_cluster "$executors"
  run_config "cluster$executors" --cluster "$scheduler"
  line="cluster of $executors: scheduler $(hwm "${pids[0]}") MiB"
  for i in $(seq "$executors"); do line+=", executor $i $(hwm "${pids[$i]}") MiB"; done
  node_rss+=("$line")
  stop_cluster
done

# The answers must agree: compare each cluster result with the local one, row for row.
py=${SPILLWAY_BENCH_VENV:-$HOME/.cache/spillway/bench-venv}/bin/python
check=$("$py" - "$work" <<'PY'
# Same rows in any order (sorted by their non-float values); floats within 1e-9 relative (a
# different summation order changes the last digits).
import math, sys, pathlib
import pyarrow.parquet as pq
def rows(path):
    table = pq.read_table(path)
    out = list(zip(*(table.column(i).to_pylist() for i in range(table.num_columns))))
    return sorted(out, key=lambda row: repr([v for v in row if not isinstance(v, float)]))
def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return a == b
work = pathlib.Path(sys.argv[1])
bad = []
for local in sorted(work.glob("out-local-*.parquet")):
    want = rows(local)
    for label in ("cluster1", "cluster2"):
        other = work / local.name.replace("local", label)
        got = rows(other)
        if len(got) != len(want) or not all(
            len(g) == len(w) and all(same(x, y) for x, y in zip(g, w)) for g, w in zip(got, want)
        ):
            bad.append(other.name)
print("every answer agrees" if not bad else "answers differ: " + ", ".join(bad))
PY
)

report=$(
  echo "## Cluster overhead, $(date -u +%Y-%m-%d) ($(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo))"
  echo
  echo "Parquet, H2O 1e7 rows (100 groups) and 10M claims rows; --memory-limit $memory --workers 2 for the"
  echo "local run and for each executor; median of $reps runs; client peak RSS in MiB. $("$bin" --version 2>/dev/null || true)"
  echo
  echo "| question | local s | cluster, 1 executor s | ratio | cluster, 2 executors s | ratio | client RSS local / 1 / 2 |"
  echo "|---|---|---|---|---|---|---|"
  g1=0; g2=0; n=0
  while IFS=$'\t' read -r id _ _; do
    l=${seconds[local,$id]}; c1=${seconds[cluster1,$id]}; c2=${seconds[cluster2,$id]}
    r1=$(python3 -c "print(f'{$c1/max($l,0.001):.2f}')"); r2=$(python3 -c "print(f'{$c2/max($l,0.001):.2f}')")
    echo "| $id | $l | $c1 | $r1 | $c2 | $r2 | ${rss[local,$id]} / ${rss[cluster1,$id]} / ${rss[cluster2,$id]} |"
  done <<<"$questions"
  python3 - <<PY
import math
rows = """$(for id in q1 q2 q3 q4 q5 q6 q7 q8 q9 q10; do echo "${seconds[local,$id]} ${seconds[cluster1,$id]} ${seconds[cluster2,$id]}"; done)""".split("\n")
vals = [list(map(float, r.split())) for r in rows if r.strip()]
g = lambda xs: math.exp(sum(math.log(max(x, 1e-3)) for x in xs) / len(xs))
l, c1, c2 = (g([v[i] for v in vals]) for i in range(3))
print(f"\nGeometric mean over q1-q10: local {l:.2f} s, cluster of 1 {c1:.2f} s ({c1/l:.2f} x), cluster of 2 {c2:.2f} s ({c2/l:.2f} x).")
PY
  echo
  for line in "${node_rss[@]}"; do echo "- Peak RSS over the whole run, $line."; done
  echo "- Answers (rows in any order, floats within 1e-9 relative): $check."
)
echo "$report"
[ -z "$out" ] || echo "$report" >"$out"
