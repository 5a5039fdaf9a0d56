#!/usr/bin/env python3
"""Rooms and import arrows: which top-level module of src/ refers to which (`crate::NAME`).

Usage: python3 benches/module_deps.py [SRC_DIR]   (default: src)
Prints one line per room with the rooms it imports, then the totals. A room is a top-level
module: `src/NAME.rs` together with everything under `src/NAME/`. For the old flat layout
(`src/lib.rs` + `spillway::`), references through the crate name count too.
"""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
rooms = {}
for path in sorted(src.rglob("*.rs")):
    relative = path.relative_to(src)
    room = relative.parts[0].removesuffix(".rs")
    if room in ("lib", "main"):
        room = "main" if room == "main" else "lib"
    text = path.read_text()
    # `crate::a::b`, `crate::{a, b::c}` and `spillway::a`
    targets = set(re.findall(r"\b(?:crate|spillway)::([a-z_]+)", text))
    for group in re.findall(r"\b(?:crate|spillway)::\{([^}]*)\}", text):
        targets |= set(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
    entry = rooms.setdefault(room, {"files": 0, "lines": 0, "imports": set()})
    entry["files"] += 1
    entry["lines"] += text.count("\n")
    entry["imports"] |= {t for t in targets if t != room and t != "self"}

edges = 0
for room, entry in sorted(rooms.items()):
    imports = sorted(entry["imports"])
    edges += len(imports)
    print(f"{room:10} {entry['files']:3} files {entry['lines']:6} lines -> {', '.join(imports)}")
print(f"{len(rooms)} rooms, {edges} import arrows, "
      f"{sum(e['files'] for e in rooms.values())} files")
