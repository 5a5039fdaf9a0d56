#!/usr/bin/env bash
# Verifies docker/ end to end on a machine without an image registry (run as root): builds the
# images with podman from a clean clone of the committed tree, brings docker/compose.yaml up,
# waits for the first answer over the Postgres wire protocol from the cluster, checks it, checks
# that no container printed the S3 secret, and takes everything down. Prints the image size and
# the time from `up` to the first answer.
#
#   docker/verify.sh [PATH/TO/ctr-smoke.sh]      (default: ../shared/containers/ctr-smoke.sh)
#
# Not part of `cargo test`: a cold run builds the release binary inside the image (about
# 30 minutes on 2 cores); with podman's build cache warm it takes a few minutes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
smoke=${1:-$repo/../shared/containers/ctr-smoke.sh}
work=${CTR_WORK:-${TMPDIR:-/tmp}/ctr}
clone=$(mktemp -d)
trap 'rm -rf "$clone"' EXIT
git clone -q "$repo" "$clone/spillway"
cd "$clone/spillway"

# 1. podman, the base-image stand-ins, the image build and a first compose up/down.
t0=$SECONDS
bash "$smoke" "$clone/spillway"
echo "== build and smoke: $((SECONDS - t0)) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'spillway' || true

# 2. Up again, timed to the first answer from the cluster through `serve`.
pc="$work/venv/bin/podman-compose -f docker/compose.yaml"
secret=verify-secret-$RANDOM$RANDOM
export AWS_SECRET_ACCESS_KEY=$secret SPILLWAY_ANALYST_PASSWORD=verify-password SAMPLE_ROWS=200000
cleanup() { $pc down -t 0 -v >/dev/null 2>&1 || true; rm -rf "$clone"; }
trap cleanup EXIT
t1=$SECONDS
$pc up -d >/dev/null
answer=""
for _ in $(seq 180); do
  answer=$(PGPASSWORD=verify-password PGCONNECT_TIMEOUT=2 psql -X -A -t \
    "host=127.0.0.1 port=5432 user=analyst dbname=spillway sslmode=disable" \
    -c "SELECT count(*) FROM claims" 2>/dev/null) && [ "$answer" = 200000 ] && break
  sleep 1
done
echo "== compose up to the first answer: $((SECONDS - t1)) s (answer: ${answer:-none})"
[ "$answer" = 200000 ] || { $pc logs; exit 1; }
# The same question where the executors must shuffle: per-state sums, on the cluster.
PGPASSWORD=verify-password psql -X -A -t "host=127.0.0.1 port=5432 user=analyst dbname=spillway sslmode=disable" \
  -c "EXPLAIN SELECT plan_id, count(*) FROM claims GROUP BY plan_id" | grep -q "distributed_plan" \
  || { echo "serve did not run on the cluster"; exit 1; }
if $pc logs 2>&1 | grep -F "$secret"; then echo "a container printed the S3 secret"; exit 1; fi
$pc ps
echo "== OK"
