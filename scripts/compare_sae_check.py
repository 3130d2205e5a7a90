#!/usr/bin/env python3
"""Compares glassbox's encode with sae-lens' on the inputs check_sae_lens_load.py saved.
Run in the glassbox venv: .venv-py/bin/python scripts/compare_sae_check.py DIR [DIR ...]"""
import json
import struct
import sys

import numpy as np

import glassbox


def read(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        if k != "__metadata__":
            lo, hi = v["data_offsets"]
            out[k] = np.frombuffer(data[8 + n + lo:8 + n + hi], dtype=np.float32).reshape(v["shape"])
    return out


for d in sys.argv[1:]:
    t = read(f"{d}/sae_lens_check.safetensors")
    acts = glassbox.SAE.load(d).encode(t["x"])
    diff = float(np.abs(acts - t["acts"]).max())
    print(f"{d}: max |glassbox - sae-lens| = {diff:.2e}")
    assert diff < 1e-4
