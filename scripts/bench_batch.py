#!/usr/bin/env python3
"""Throughput of dataset runs: prompts/s of `glassbox batch` for attribution and analyze over
generated IOI prompts, one prompt per group (--batch-size 1) against batched groups, and of
glassbox.distributed with 1 and 2 Ray workers. Rounds alternate the variants (the machine
drifts); prints a markdown table of the median prompts/s.

    .venv-py/bin/python scripts/bench_batch.py [--model smollm2-135m] [--n 256] [--rounds 2]

Needs target/release/glassbox and the Python package (scripts/test builds both) with ray.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = os.environ.get("GLASSBOX_BIN", str(REPO / "target" / "release" / "glassbox"))


def batch(model, prompts, method, batch_size, out):
    if Path(out).exists():
        os.remove(out)
    t0 = time.perf_counter()
    subprocess.run([BIN, "batch", "--model", model, "--input", prompts, "--method", method, "--batch-size", str(batch_size),
                    "--out", out], check=True, capture_output=True)
    return time.perf_counter() - t0


def ray_run(model, prompts, method, workers, out, n):
    code = f"""
import time, ray, glassbox.distributed
ray.init(num_cpus={workers}, include_dashboard=False, log_to_driver=False)
t0 = time.perf_counter()
glassbox.distributed.run({prompts!r}, {method!r}, {model!r}, {out!r}, num_workers={workers}, cpus_per_worker=1,
                         shard_size=max(1, {n} // (4 * {workers})))
print(time.perf_counter() - t0)
"""
    env = dict(os.environ, RAYON_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // workers)))
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return float(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="attribution,analyze")
    ap.add_argument("--ray", action="store_true", help="also glassbox.distributed with 1 and 2 workers")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    prompts = str(d / "p.jsonl")
    subprocess.run([BIN, "batch", "prompts", "--model", a.model, "--task", "ioi", "--n", str(a.n), "--out", prompts],
                   check=True, capture_output=True)
    variants = []
    for m in a.methods.split(","):
        variants += [(m, "one prompt at a time (--batch-size 1)", lambda m=m: batch(a.model, prompts, m, 1, str(d / "r.parquet"))),
                     (m, "batched (--batch-size 16)", lambda m=m: batch(a.model, prompts, m, 16, str(d / "r.parquet")))]
        if a.ray:
            for w in (1, 2):
                variants.append((m, f"Ray, {w} worker{'s' if w > 1 else ''}",
                                 lambda m=m, w=w: ray_run(a.model, prompts, m, w, str(d / f"ray{w}-{time.time_ns()}.parquet"), a.n)))
    times = {(m, v): [] for m, v, _ in variants}
    for _ in range(a.rounds):
        for m, v, f in variants:
            times[(m, v)].append(f())
    print(f"| method | how | prompts/s ({a.n} IOI prompts, {a.model}, median of {a.rounds}) | seconds |")
    print("|---|---|---|---|")
    for (m, v), ts in times.items():
        t = statistics.median(ts)
        print(f"| {m} | {v} | {a.n / t:.2f} | {t:.1f} |")
    print(json.dumps({f"{m}/{v}": ts for (m, v), ts in times.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
