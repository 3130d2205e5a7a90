#!/usr/bin/env python3
"""Benchmarks of the Python package on SmolLM2-135M (the IOI prompt):

1. `analyze` from Python against the same call from Rust
   (`target/release/examples/profile_method analyze N`), interleaved, in separate processes
   with the same thread settings.
2. The GIL is released: two Python threads running `analyze` on two models against one
   thread, with one rayon thread per call (RAYON_NUM_THREADS=1) so that two calls can use the
   machine's two cores; with the GIL held the two threads would take twice as long.

Run from the repository root after `scripts/test` (or a `maturin build` + install) and
`cargo build --release -p glassbox --example profile_method`:

    .venv-py/bin/python scripts/bench_python.py [rounds]
"""

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IOI = "When Mary and John went to the store, John gave a drink to"
CALLS = 10


def python_analyze(calls: int) -> float:
    code = f"""
import time, glassbox
m = glassbox.Model.load("smollm2-135m")
gb = glassbox.GlassboxV2(m)
gb.analyze({IOI!r}, " Mary", " John")
t = time.perf_counter()
for _ in range({calls}):
    gb.analyze({IOI!r}, " Mary", " John")
print((time.perf_counter() - t) * 1e3 / {calls})
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def rust_analyze(calls: int) -> float:
    exe = REPO / "target" / "release" / "examples" / "profile_method"
    out = subprocess.run([str(exe), "analyze", str(calls)], check=True, capture_output=True, text=True)
    return float(re.search(r"([\d.]+) ms per call", out.stderr).group(1))


def threads(calls: int) -> tuple:
    code = f"""
import threading, time, glassbox
a = glassbox.Model.load("smollm2-135m")
b = glassbox.Model.load("smollm2-135m")
def run(m):
    gb = glassbox.GlassboxV2(m)
    for _ in range({calls}):
        gb.analyze({IOI!r}, " Mary", " John")
run(a); run(b)
t = time.perf_counter(); run(a); one = time.perf_counter() - t
ts = [threading.Thread(target=run, args=(m,)) for m in (a, b)]
t = time.perf_counter()
for x in ts: x.start()
for x in ts: x.join()
two = time.perf_counter() - t
print(one, two)
"""
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    one, two = map(float, out.stdout.split())
    return one, two


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    py, rs = [], []
    for _ in range(rounds):
        py.append(python_analyze(CALLS))
        rs.append(rust_analyze(CALLS))
    p, r = statistics.median(py), statistics.median(rs)
    print(f"analyze on SmolLM2 (IOI), {os.cpu_count()} cores, median of {rounds} interleaved rounds of {CALLS} calls")
    print("| what | ms per call |")
    print("|---|---|")
    print(f"| Rust (`profile_method analyze`) | {r:.1f} (rounds: {', '.join(f'{x:.1f}' for x in rs)}) |")
    print(f"| Python (`GlassboxV2.analyze`) | {p:.1f} (rounds: {', '.join(f'{x:.1f}' for x in py)}) |")
    print(f"| Python / Rust | {p / r:.3f} |")
    one, two = threads(3)
    print()
    print("GIL: 3 analyze calls per thread, RAYON_NUM_THREADS=1")
    print("| what | s |")
    print("|---|---|")
    print(f"| one thread, one model | {one:.2f} |")
    print(f"| two threads, two models, at once | {two:.2f} |")
    print(f"| two / one | {two / one:.2f} |")


if __name__ == "__main__":
    main()
