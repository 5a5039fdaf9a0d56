#!/usr/bin/env python3
"""Write src/link-order.txt: the functions a typical spillway run executes, hottest first, for
the linker to place side by side (build.rs passes it to lld as --symbol-ordering-file).

Why: the release binary has ~120 MB of machine code, and what one query runs is scattered over
it. Each first touch of a 64 KiB stretch of code is a page fault (about 7 us here, with the
kernel mapping 16 pages per fault), and a small query took ~800 of them: about 5 ms of a 15 ms
`SELECT count(*)`. Packed together, the code a run needs spans far fewer pages.

How: every run of a small corpus (SELECT 1; the H2O questions and claims queries over small
Parquet and CSV files; each output format) goes through valgrind's callgrind, which lists every
function executed, not just the sampled ones. Symbols are written mangled, as the linker names
them; a symbol that a later build no longer has is skipped by the linker, so a stale list costs
only start-up time, never correctness. Rerun after upgrading DataFusion or the toolchain:

    python3 benches/link_order.py --bin target/release/spillway
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engines  # noqa: E402  (the benchmark's questions and claims schema)


def corpus(data: Path, config: Path):
    """(name, argv after the binary) for each run the list should cover."""
    base = ["query", "-q", "--workers", "2"]
    yield "select1", base + ["SELECT 1"]
    yield "select1-table", ["query", "--workers", "2", "SELECT 1 AS one, 'a' AS two"]
    tables = {("x", "parquet"): data / "h2o-pq/*.parquet", ("x", "csv"): data / "h2o-csv/*.csv",
              ("c", "parquet"): data / "cl-pq/*.parquet", ("c", "csv"): data / "cl-csv/*.csv"}
    for question in engines.ALL_QUESTIONS.values():
        for fmt in ("parquet", "csv"):
            argv = base + ["-t", f"{question.table}={tables[(question.table, fmt)]}",
                           "-o", "{out}/result.arrow", question.sql]
            if question.table == "c" and fmt == "csv":
                argv = ["--config", str(config)] + argv
            yield f"{question.id}-{fmt}", argv
    for suffix in ("csv", "parquet", "json"):
        yield f"out-{suffix}", base + ["-t", f"x={tables[('x', 'parquet')]}", "-o",
                                       f"{{out}}/result.{suffix}",
                                       "SELECT id1, sum(v1) AS v1 FROM x GROUP BY id1"]
    yield "limited", base + ["--memory-limit", "256MiB", "-t", f"x={tables[('x', 'parquet')]}",
                             "-o", "{out}/result.arrow", engines.ALL_QUESTIONS["q10"].sql]


def executed(binary: str, name: str, argv, scratch: Path) -> Counter:
    """Instructions per mangled function over one callgrind run."""
    out = scratch / name
    out.mkdir(parents=True, exist_ok=True)
    profile = out / "callgrind.out"
    argv = [a.replace("{out}", str(out)) for a in argv]
    run = subprocess.run(["valgrind", "--tool=callgrind", "--demangle=no",
                          f"--callgrind-out-file={profile}", binary] + argv,
                         cwd=out, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"link_order: run {name} failed:\n{run.stderr[-2000:]}")
    costs: Counter = Counter()
    names = {}
    current = None
    after_call = False
    fn_line = re.compile(r"^fn=\((\d+)\)(?: (.*))?$")
    for line in profile.read_text(errors="replace").splitlines():
        match = fn_line.match(line)
        if match:
            ident, text = match.groups()
            if text:
                names[ident] = text
            current = names.get(ident)
            costs.setdefault(current, 0)
        elif line.startswith("calls="):
            after_call = True
        elif current and line[:1] in "0123456789+-*":
            # A cost line: position, then instructions. After `calls=` it is the callee's
            # inclusive cost, not this function's own.
            fields = line.split()
            if not after_call and len(fields) >= 2 and fields[1].isdigit():
                costs[current] += int(fields[1])
            after_call = False
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="a release build of spillway")
    parser.add_argument("--out", default=str(HERE.parent / "src" / "link-order.txt"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    binary = str(Path(args.bin).resolve())
    with tempfile.TemporaryDirectory(prefix="spillway-link-order-") as temp:
        data = Path(temp) / "data"
        for kind, fmt, folder, rows in [("h2o", "parquet", "h2o-pq", 200_000),
                                        ("h2o", "csv", "h2o-csv", 200_000),
                                        ("claims", "parquet", "cl-pq", 100_000),
                                        ("claims", "csv", "cl-csv", 100_000)]:
            subprocess.run([binary, "gen", kind, "-q", "--rows", str(rows), "--files", "4",
                            "--format", fmt, "--out", str(data / folder)],
                           check=True, capture_output=True)
        config = engines.spillway_claims_config(Path(temp) / "claims.toml", data / "cl-csv")
        total: Counter = Counter()
        runs = list(corpus(data, config))
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(executed, binary, name, argv, Path(temp) / "runs"): name
                       for name, argv in runs}
            for future in concurrent.futures.as_completed(futures):
                costs = future.result()
                # Every run counts: a function that one run needs is as much a page fault there
                # as a hot one; within that, hotter first.
                for symbol, cost in costs.items():
                    total[symbol] += cost + 1
                print(f"link_order: {futures[future]}: {len(costs)} functions", file=sys.stderr)
    # Names from the C libraries the binary loads (libc's memcpy, say) are not in it; the
    # linker skips them.
    symbols = [s for s, _ in total.most_common() if s and " " not in s]
    Path(args.out).write_text("".join(f"{s}\n" for s in symbols))
    print(f"link_order: {len(symbols)} symbols written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
