# Shared by the benchmark scripts (sourced, not run): the binary under test, the cached
# generated claims, and timing one process. Each function says what it sets or prints.

# Set SPILLWAY_BIN (this checkout's release build unless given) and `build`, the words a
# report uses for it.
spillway_binary() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
  if [ -z "${SPILLWAY_BIN:-}" ]; then
    cargo build --release --quiet
    SPILLWAY_BIN="$CARGO_TARGET_DIR/release/spillway"
  fi
  build="release build"
  case "$SPILLWAY_BIN" in
    */debug/*) build="debug build (dependencies at opt-level 2, Spillway's own code at 0)" ;;
  esac
}

# claims_data SCRIPT ROWS FORMAT: set `data` to the cached folder of ROWS generated claims
# (8 files, seed 42) under SPILLWAY_BENCH_DIR, generating it when missing. The generator's
# table config (for CSV with the explicit schema) is kept beside it as `$data.toml`; a cache
# without it is made again.
claims_data() {
  local script="$1" rows="$2" format="$3"
  data="${SPILLWAY_BENCH_DIR:-$HOME/.cache/spillway/bench}/claims-$rows-$format"
  if [ ! -d "$data" ] || [ ! -f "$data.toml" ]; then
    echo "$script: generating $rows claims ($format) in $data" >&2
    rm -rf "$data"
    mkdir -p "$(dirname "$data")"
    "$SPILLWAY_BIN" gen claims --rows "$rows" --files 8 --format "$format" --out "$data" \
      --seed 42 --print-config > "$data.toml.tmp"
    mv "$data.toml.tmp" "$data.toml"
  fi
}

# time_process DIR NAME COMMAND...: run COMMAND under /usr/bin/time -v with its output in
# DIR/NAME.{out,err,time}; print "seconds peak_rss_mib". A failing command prints its stderr
# and fails.
time_process() {
  local dir="$1" name="$2"; shift 2
  /usr/bin/time -v -o "$dir/$name.time" "$@" > "$dir/$name.out" 2> "$dir/$name.err" \
    || { cat "$dir/$name.err" "$dir/$name.time" >&2; return 1; }
  awk -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i] }
    /Maximum resident set size/ { kib = $2 }
    END { printf "%.2f %d\n", s, kib / 1024 }' "$dir/$name.time"
}
