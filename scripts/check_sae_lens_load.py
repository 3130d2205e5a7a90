#!/usr/bin/env python3
"""Loads SAE folders written by `glassbox sae train` with the real sae-lens package and writes
its encode of random inputs beside each (`sae_lens_check.safetensors`: x, acts), so glassbox's
own encode can be compared with it (scripts/compare_sae_check.py, run in the glassbox venv).

Run by hand in the fixture virtualenv (which has sae-lens):
    .venv-fixtures/bin/python scripts/check_sae_lens_load.py DIR [DIR ...]
"""
import sys

import torch
from safetensors.torch import save_file
from sae_lens import SAE

for d in sys.argv[1:]:
    sae = SAE.load_from_disk(d)
    torch.manual_seed(0)
    x = torch.randn(32, sae.cfg.d_in) * 3
    with torch.no_grad():
        acts = sae.encode(x)
    save_file({"x": x.contiguous(), "acts": acts.contiguous()}, f"{d}/sae_lens_check.safetensors")
    print(f"{d}: sae-lens loaded {type(sae).__name__} ({sae.cfg.d_in} -> {sae.cfg.d_sae}), "
          f"{int((acts != 0).sum())} active of {acts.numel()}")
