#!/usr/bin/env python3
"""Long prompts: wall time and peak memory of glassbox commands at several prompt lengths,
for one or more glassbox binaries run interleaved (round by round, so that the machine's drift
hits each binary alike), with this machine's sgemm rate (numpy on 2 threads) measured at the
start and the end of the same run.

    python3 scripts/bench_long.py --bin new=target/release/glassbox --bin old=/tmp/old/glassbox \
        --model smollm2-135m --sizes 15,256,1015,4096 --methods run,attribution --rounds 2

Prompts: the IOI sentence after the first words of the GPL-3 text that Debian ships
(/usr/share/common-licenses/GPL-3), as many as give about the asked number of tokens; the
token count each run actually had is printed. Needs /usr/bin/time. Prints one Markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

IOI = "When Mary and John went to the store, John gave a drink to"
TEXT = "/usr/share/common-licenses/GPL-3"
# Tokens per word of that text for SmolLM2's and Gemma 3's tokenizers, about.
TOKENS_PER_WORD = 1.23


def sgemm_rate(python):
    code = (
        "import numpy as np, time\n"
        "a=np.random.rand(2048,2048).astype(np.float32); b=a.copy(); a@b\n"
        "best=min((lambda t: (a@b, time.perf_counter()-t)[1])(time.perf_counter()) for _ in range(5))\n"
        "print(2*2048**3/best/1e9)\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


def prompt_of(tokens):
    if tokens <= 15:
        return IOI
    words = open(TEXT).read().split()
    n = max(1, round((tokens - 15) / TOKENS_PER_WORD))
    return " ".join(words[:n]) + " " + IOI


def run_once(binary, model, method, prompt):
    args = [binary, method, "--model", model, "--prompt", prompt, "--json"]
    if method != "run":
        args += ["--correct", " Mary", "--incorrect", " John"]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-o", tf.name, "-f", "%M"] + args, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"{' '.join(args[:2])} failed: {out.stderr[-400:]}")
        peak_mb = int(tf.read().strip().splitlines()[-1]) / 1024
    env = json.loads(out.stdout)
    return wall, env.get("seconds", float("nan")), peak_mb, len(env["input"]["tokens"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH of a glassbox binary")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", default="15,256,1015,4096")
    ap.add_argument("--methods", default="run,attribution")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--python", default=".venv-py/bin/python", help="a Python with numpy, for the sgemm rate")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    sizes = [int(s) for s in a.sizes.split(",")]
    methods = a.methods.split(",")
    rate0 = sgemm_rate(a.python)
    results = {}
    for _ in range(a.rounds):
        for size in sizes:
            prompt = prompt_of(size)
            for method in methods:
                for name, path in bins:
                    r = run_once(path, a.model, method, prompt)
                    results.setdefault((size, method, name), []).append(r)
                    print(f"{name} {method} {r[3]} tokens: {r[0]:.2f} s wall, {r[1]:.2f} s in the method, {r[2]:.0f} MB", file=sys.stderr)
    rate1 = sgemm_rate(a.python)
    print(f"model {a.model}; numpy sgemm (2048³, 2 threads): {rate0:.0f} GFLOP/s before, {rate1:.0f} after; medians of {a.rounds} interleaved rounds (of two, the slower)\n")
    print("| tokens | method | " + " | ".join(f"{n}: method s / wall s / peak MB" for n, _ in bins) + " |")
    print("|---|---|" + "---|" * len(bins))
    for size in sizes:
        for method in methods:
            cells = []
            tokens = None
            for name, _ in bins:
                rs = sorted(results[(size, method, name)], key=lambda r: r[1])
                med = rs[len(rs) // 2]
                tokens = med[3]
                cells.append(f"{med[1]:.2f} / {med[0]:.2f} / {max(r[2] for r in rs):.0f}")
            print(f"| {tokens} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
