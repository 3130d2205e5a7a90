"""TransformerLens' cache conventions (issue 28): negative layers, integer `pos_slice`
dropping the position axis, the stacking helpers' `layer`, against TransformerLens 3.2.1 on a
TransformerLens checkpoint (recorded by scripts/fixtures/tl_cache_parity.py)."""

import json
import re

import numpy as np
import pytest

import glassbox

from conftest import FIXTURES

FOLDER = FIXTURES / "tl" / "ln_learned"
RECORD = json.loads((FOLDER / "cache_parity.json").read_text())


@pytest.fixture(scope="module")
def model():
    return glassbox.Model.load(str(FOLDER), prepend_bos=False)


@pytest.fixture(scope="module")
def cache(model):
    _, cache = model.run_with_cache([RECORD["tokens"]])
    return cache


@pytest.fixture(scope="module")
def switched():
    """A model with TransformerLens' switches on: runs cache hook_result and hook_attn_in."""
    model = glassbox.Model.load(str(FOLDER), prepend_bos=False)
    model.set_use_attn_result(True)
    model.set_use_attn_in(True)
    return model, model.run_with_cache([RECORD["tokens"]])[1]


def parse(key):
    """`name,arg=value,...` → (name, kwargs), values as Python literals."""
    name, *args = key.split(",")
    kwargs = {}
    for a in args:
        if "=" not in a:
            kwargs[a] = True
            continue
        k, v = a.split("=")
        kwargs[k] = None if v == "None" else int(v) if v.lstrip("-").isdigit() else v
    return name, kwargs


def zero_head(x, hook, head):
    x[:, :, head] = 0.0
    return x


def glassbox_value(model, cache, key):
    if re.match(r"^\w+,-?\d+$", key):
        name, layer = key.split(",")
        return cache[name, int(layer)]
    name, kw = parse(key)
    layer, pos = kw.get("layer"), kw.get("pos_slice")
    ln, mlp = kw.get("apply_ln", False), kw.get("mlp_input", False)
    if name == "accumulated_resid":
        return cache.accumulated_resid(layer=layer, incl_mid=kw.get("incl_mid", False), mlp_input=mlp, apply_ln=ln, pos_slice=pos)
    if name == "decompose_resid":
        return cache.decompose_resid(layer=layer, mlp_input=mlp, apply_ln=ln, pos_slice=pos)
    if name == "stack_head_results":
        return cache.stack_head_results(layer=layer, apply_ln=ln, pos_slice=pos)
    if name == "apply_ln_to_stack":
        # The stacks the recording script normalised (see scripts/fixtures/tl_cache_parity.py).
        if kw.get("recompute_ln"):
            return cache.apply_ln_to_stack(cache.accumulated_resid(pos_slice=pos), recompute_ln=True, pos_slice=pos)
        stack = cache.decompose_resid(layer=layer, mlp_input=mlp, pos_slice=pos)
        return cache.apply_ln_to_stack(stack, layer=layer, mlp_input=mlp, pos_slice=pos)
    if name == "zero_head":
        logits = model.run_with_hooks([RECORD["tokens"]], fwd_hooks=[(kw["hook"], lambda x, h: zero_head(x, h, kw["head"]))])
        return logits[0, -1]
    if name == "logit_attrs":
        stack = cache.stack_head_results(layer=-1, pos_slice=pos)
        return cache.logit_attrs(stack, kw["tokens"], incorrect_tokens=kw.get("incorrect_tokens"), pos_slice=pos)
    raise KeyError(key)


@pytest.mark.parametrize("key", sorted(RECORD["cases"]))
def test_cache_helpers_match_transformer_lens(model, cache, switched, key):
    want = RECORD["cases"][key]
    if key.split(",")[0] in ("result", "attn_in", "zero_head"):
        model, cache = switched
    if key.startswith("rb:"):
        # A run_with_cache(remove_batch_dim=True) cache.
        cache, key = model.run_with_cache([RECORD["tokens"]], remove_batch_dim=True)[1], key[3:]
    got = np.asarray(glassbox_value(model, cache, key), dtype=np.float64)
    assert list(got.shape) == want["shape"], f"{key}: shape {got.shape}, TransformerLens {want['shape']}"
    ref = np.asarray(want["values"]).reshape(want["shape"])
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-4 * scale, f"{key}: differs by {np.abs(got - ref).max():.2e}"


def test_layers_out_of_range_are_errors(cache):
    n = RECORD["n_layers"]
    with pytest.raises(glassbox.InputError, match="out of range"):
        cache["resid_post", -n - 1]
    with pytest.raises(glassbox.InputError, match="out of range"):
        cache.accumulated_resid(layer=n + 1)
    with pytest.raises(glassbox.InputError, match="out of range"):
        cache.stack_head_results(layer=-n - 3)


@pytest.mark.parametrize("name", ["ln_learned", "lnpre_rotary_gqa"])
def test_weights_have_transformer_lens_names_and_shapes(name):
    """model.W_Q etc. equal the tensors TransformerLens saved in the checkpoint's state dict,
    stacked over layers, grouped keys and values repeated per query head."""
    from conftest import read_safetensors

    folder = FIXTURES / "tl" / name
    sd = read_safetensors(folder / "model.safetensors")
    model = glassbox.Model.load(str(folder))
    cfg = model.cfg
    n, h = cfg.n_layers, cfg.n_heads

    def tl(key):
        per = []
        for l in range(n):
            w = sd.get(f"blocks.{l}.{key}")
            if w is None:  # grouped-query attention keeps `_W_K` [n_kv_heads, ...]
                w = np.repeat(sd[f"blocks.{l}.{key.replace('.', '._', 1)}"], h // cfg.n_key_value_heads, axis=0)
            per.append(w)
        return np.stack(per)

    pairs = {
        "W_E": sd["embed.W_E"], "W_U": sd["unembed.W_U"], "b_U": sd["unembed.b_U"],
        "W_Q": tl("attn.W_Q"), "W_K": tl("attn.W_K"), "W_V": tl("attn.W_V"), "W_O": tl("attn.W_O"),
        "b_Q": tl("attn.b_Q"), "b_K": tl("attn.b_K"), "b_V": tl("attn.b_V"), "b_O": tl("attn.b_O"),
        "W_in": tl("mlp.W_in"), "W_out": tl("mlp.W_out"),
    }
    if "pos_embed.W_pos" in sd:
        pairs["W_pos"] = sd["pos_embed.W_pos"]
    else:
        assert model.W_pos is None
    if f"blocks.0.mlp.W_gate" in sd:
        pairs["W_gate"] = tl("mlp.W_gate")
    else:
        # TransformerLens adds a gated MLP's b_in after the product; glassbox folds it into b_out.
        pairs["b_in"], pairs["b_out"] = tl("mlp.b_in"), tl("mlp.b_out")
        assert model.W_gate is None
    for attr, want in pairs.items():
        got = getattr(model, attr)
        assert got.shape == want.shape, f"{name} {attr}: {got.shape} against TransformerLens' {want.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{name} {attr}")


def test_weights_of_a_quantized_model(smollm2):
    """A GGUF's weights dequantized, in TransformerLens' shapes."""
    c = smollm2.cfg
    assert smollm2.W_Q.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert smollm2.W_K.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert smollm2.W_in.shape == (c.n_layers, c.d_model, c.d_mlp) and smollm2.W_gate.shape == smollm2.W_in.shape
    assert smollm2.W_U.shape == (c.d_model, c.d_vocab) and smollm2.W_pos is None
    # Keys and values repeated per query head: heads of one group are equal.
    k = smollm2.W_K
    group = c.n_heads // c.n_key_value_heads
    assert np.array_equal(k[:, 0], k[:, group - 1])


def test_blocks_give_each_layers_weights_and_hook_points(model):
    """TransformerLens' model.blocks[l]: weights as the layer's slice of the stacked
    properties, hook points by attribute, usable as hook names; negative indices, slices and
    out-of-range errors as a list's."""
    n = RECORD["n_layers"]
    assert len(model.blocks) == n and len(list(model.blocks)) == n
    last = model.blocks[-1]
    np.testing.assert_array_equal(last.attn.W_Q, model.W_Q[n - 1])
    np.testing.assert_array_equal(model.blocks[0].mlp.W_in, model.W_in[0])
    np.testing.assert_array_equal(model.blocks[0].attn.b_O, model.b_O[0])
    assert model.blocks[1].hook_resid_pre.name == "blocks.1.hook_resid_pre"
    assert model.blocks[0].attn.hook_z.name == "blocks.0.attn.hook_z"
    assert model.blocks[0].ln1.hook_scale.name == "blocks.0.ln1.hook_scale"
    assert [b.layer for b in model.blocks[-2:]] == [n - 2, n - 1]
    with pytest.raises(IndexError):
        model.blocks[n]
    assert not hasattr(model.blocks[0], "hook_nonsense") and not hasattr(model.blocks[0].attn, "W_nonsense")
    # A hook named through blocks runs as any other.
    seen = []
    model.run_with_hooks([RECORD["tokens"]], fwd_hooks=[(model.blocks[1].attn.hook_z.name, lambda z, hook: seen.append(hook.name))])
    assert seen == ["blocks.1.attn.hook_z"]
