"""Shell start-up: milliseconds from starting `spillway shell` in a pseudo-terminal to its first
prompt, five times. usage: python3 benches/shell_start.py BINARY (run it in a folder with the
spillway.toml to measure: table registration is part of start-up)."""
import os, pty, sys, time, select
binary = sys.argv[1]
times = []
for _ in range(5):
    start = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["SPILLWAY_PAGER"] = "cat"
        os.execv(binary, [binary, "shell"])
    seen = b""
    while b"spillway> " not in seen:
        r, _, _ = select.select([fd], [], [], 10)
        seen += os.read(fd, 4096)
    times.append(time.monotonic() - start)
    os.write(fd, b"\\q\r")
    os.waitpid(pid, 0)
print("to first prompt: " + ", ".join(f"{t*1000:.0f} ms" for t in times))
