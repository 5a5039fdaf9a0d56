#!/usr/bin/env bash
# The founding query over the same claims files on local disk and on a loopback S3 server
# (s3s-fs), interleaved in one run. Prints seconds, requests and bytes fetched per query.
#   bash benches/s3_vs_local.sh [ROWS] [REPEATS]   (defaults 10000000 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000000}; repeats=${2:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
export AWS_METADATA_ENDPOINT=http://127.0.0.1:9
command -v s3s-fs >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
# SPILLWAY_BIN measures a given binary instead of building this checkout.
if [ -z "${SPILLWAY_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${SPILLWAY_BIN:-$CARGO_TARGET_DIR/release/spillway}"
dir="${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}/s3-$rows"
mkdir -p "$dir/root/claims"
for format in csv parquet; do
  if [ ! -d "$dir/root/claims/$format" ]; then
    "$bin" -q gen claims --rows "$rows" --files 8 --format "$format" --out "$dir/root/claims/$format"
  fi
done
RUST_LOG=info s3s-fs --host 127.0.0.1 --port 0 --access-key bench --secret-key benchsecret "$dir/root" > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q 'http://127.0.0.1:' "$dir/server.log" && break; sleep 0.1; done
endpoint=$(grep -o 'http://127.0.0.1:[0-9]*' "$dir/server.log" | head -1)
cat > "$dir/spillway.toml" <<TOML
[storage.s3]
endpoint = "$endpoint"
region = "us-east-1"
access_key_id = "bench"
secret_access_key = "benchsecret"
TOML
sql="SELECT diagnosis_code, avg(total_cost), stddev(total_cost) FROM claims GROUP BY diagnosis_code"
run() { # location → "seconds|requests|fetched"
  local start end
  start=$(date +%s.%N)
  "$bin" --config "$dir/spillway.toml" query --stats -t "claims=$1" -o "$dir/out.csv" "$sql" 2> "$dir/err"
  end=$(date +%s.%N)
  local line; line=$(grep '^files scanned' "$dir/err")
  printf '%.2f|%s|%s\n' "$(echo "$end - $start" | bc)" "$(echo "$line" | sed -E 's/.* in ([0-9]+) requests.*/\1/')" "$(echo "$line" | sed -E 's/.*; (.*) fetched.*/\1/')"
}
echo "| format | where | run | seconds | requests | fetched |"
echo "|---|---|---|---|---|---|"
for format in csv parquet; do
  ext=$format
  for i in $(seq "$repeats"); do
    for where in local s3; do
      if [ "$where" = local ]; then loc="$dir/root/claims/$format/*.$ext"; else loc="s3://claims/$format/*.$ext"; fi
      IFS='|' read -r secs requests fetched < <(run "$loc")
      echo "| $format | $where | $i | $secs | $requests | $fetched |"
    done
  done
done
