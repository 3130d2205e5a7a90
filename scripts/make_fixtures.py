#!/usr/bin/env python3
"""Generate the reference fixtures under tests/fixtures/ for glassbox.

Run by hand from the repository root:

    python3 scripts/make_fixtures.py                 # everything
    python3 scripts/make_fixtures.py --only tiny-gpt2 --only tiny-llama
    python3 scripts/make_fixtures.py --skip-real     # tiny models only (no GGUF)
    python3 scripts/make_fixtures.py --only gemma3 --out /tmp/fx   # elsewhere, e.g. to diff

The script creates `.venv-fixtures/` in the repo root (if missing), installs
torch / transformers / gguf / ... into it with pip, and re-executes itself
inside that virtualenv.  It is NOT part of CI: CI only reads the committed
fixtures.  Everything is deterministic (fixed seeds, fixed corpus).

What it produces:

  tests/fixtures/<tiny-model>/   config.json, model.safetensors (float32),
                                 tokenizer.json (shared tiny ByteLevel BPE),
                                 reference.safetensors (float64 forward, stored f32)
  tests/fixtures/smollm2/        reference.safetensors (last-position logits of
                                 SmolLM2-135M-Instruct Q4_1 GGUF via transformers),
                                 tokenizer_meta.json (GGUF tokenizer.ggml.* scalars)
  tests/fixtures/gemma3/         reference.safetensors (last-position logits of
                                 Gemma 3 270M Q4_K_M GGUF via transformers, fed ids
                                 from llama.cpp's tokenizer rule re-implemented here),
                                 gguf_meta.json (GGUF metadata, tensor list, conventions)
  tests/fixtures/generation/     smollm2.json, gemma3.json: 20 greedy tokens per prompt
                                 from transformers' generate (EOS stopping off)
  tests/fixtures/hidden_states/  transformers' output_hidden_states on the IOI prompt
                                 (tiny-llama, tiny-gpt2, smollm2), for the Python tests
  tests/fixtures/sae/<name>/     SAEs and transcoders for tiny-llama written by the real
                                 sae-lens package (random weights; every architecture, the
                                 6.x and the pre-6.0 config layouts, Gemma Scope's params.npz),
                                 with expected.safetensors: inputs, sae-lens' encode, decode

Tiny families: gpt2, llama, llama-tied, qwen2, mistral, mixtral, neox, opt,
opt-postln, gptneo, gemma, gemma2, gemma3 (see FAMILIES for the conventions
each one pins down).  Downloads are cached in ~/.cache/glassbox-fixtures
(override with GLASSBOX_FIXTURE_CACHE).

To add an architecture, add an entry to FAMILIES (see FamilySpec).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# The builders live in the package scripts/fixtures/ (one module per concern, see its
# __init__.py); `python3 scripts/make_fixtures.py` puts scripts/ on sys.path, and so
# does the re-exec inside the virtualenv.  The package imports only the standard
# library at module level, so the CLI below works before the virtualenv exists.
from fixtures.common import bootstrap, build_tokenizer, fixtures_dir, set_fixtures_dir
from fixtures.families import FAMILIES
from fixtures.generation import build_generation, build_hidden_states
from fixtures.real import REAL_FIXTURES, build_gemma3, build_smollm2
from fixtures.sae import build_sae
from fixtures.tiny import build_tiny
from fixtures.tiny_gguf import GGUF_FIXTURES, build_gguf_fixture
from fixtures.variants import VARIANTS, build_variant


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main() -> None:
    names = [f.name for f in FAMILIES] + REAL_FIXTURES + ["variants", "gguf", "generation", "hidden_states", "sae"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=names, metavar="NAME",
                    help=f"build only this fixture (repeatable): {', '.join(names)}")
    ap.add_argument("--skip-real", action="store_true",
                    help=f"skip the real-model GGUF fixtures ({', '.join(REAL_FIXTURES)})")
    ap.add_argument("--out", type=Path, default=None,
                    help="write fixtures under this folder instead of tests/fixtures "
                         "(e.g. to check that a regeneration is byte-identical)")
    args = ap.parse_args()
    bootstrap(Path(__file__))
    if args.out is not None:
        set_fixtures_dir(args.out.resolve())
        fixtures_dir().mkdir(parents=True, exist_ok=True)

    import torch
    import transformers
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    selected = set(args.only or names)
    if args.skip_real:
        selected.difference_update(REAL_FIXTURES)

    t0 = time.time()
    tiny = [f for f in FAMILIES if f.name in selected]
    if tiny:
        tok = build_tokenizer()
        print(f"[tokenizer] vocab {tok.get_vocab_size()}", flush=True)
        for spec in tiny:
            build_tiny(spec, tok, fixtures_dir() / spec.name)
    if "variants" in selected:
        tok = build_tokenizer()
        for v in VARIANTS:
            build_variant(*v, tok)
    if "gguf" in selected:
        for g in GGUF_FIXTURES:
            build_gguf_fixture(*g)
    if "smollm2" in selected:
        build_smollm2()
    if "gemma3" in selected:
        build_gemma3()
    if "generation" in selected:
        build_generation()
    if "hidden_states" in selected:
        build_hidden_states()
    if "sae" in selected:
        build_sae()

    print(f"\nSummary ({time.time() - t0:.1f} s):")
    for d in sorted(p for p in fixtures_dir().iterdir() if p.is_dir()):
        if d.name not in selected:
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file():
                print(f"  {f}  {f.stat().st_size:>9,d} bytes")


if __name__ == "__main__":
    main()
