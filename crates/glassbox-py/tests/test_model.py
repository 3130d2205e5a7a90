"""The model from Python: caches equal the Rust cache bit for bit and transformers' hidden
states; Python hooks equal declarative interventions; exceptions and bad input; gradients and
generation."""

import subprocess
import threading

import numpy as np
import pytest

import glassbox
from conftest import FIXTURES, IOI, glassbox_bin, read_safetensors


def rust_cache(model_arg, prompt, hooks, tmp_path):
    """Activations as the Rust CLI writes them (`glassbox cache`)."""
    out = tmp_path / "rust.safetensors"
    args = [str(glassbox_bin()), "cache", "--model", model_arg, "--prompt", prompt, "--out", str(out)]
    for h in hooks:
        args += ["--hook", h]
    subprocess.run(args, check=True, capture_output=True)
    return read_safetensors(out)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_cache_equals_rust_bit_for_bit_and_transformers(name, tmp_path):
    model = glassbox.Model.load(str(FIXTURES / name))
    ref = read_safetensors(FIXTURES / "hidden_states" / f"{name}.safetensors")
    assert model.to_tokens(IOI)[0].tolist() == ref["input_ids"].tolist()
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)] + ["blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z"]
    _, cache = model.run_with_cache(IOI, names_filter=hooks)
    rust = rust_cache(str(FIXTURES / name), IOI, hooks, tmp_path)
    for h in hooks:
        assert cache[h].dtype == np.float32
        assert np.array_equal(cache[h], rust[h]), h
    for l in range(model.cfg.n_layers):
        h = f"blocks.{l}.hook_resid_pre"
        d = np.abs(cache[h][0] - ref[h]).max()
        assert d <= 1e-4, (h, d)


def test_smollm2_cache_equals_rust_and_transformers(smollm2, tmp_path):
    ref = read_safetensors(FIXTURES / "hidden_states" / "smollm2.safetensors")
    assert smollm2.to_tokens(IOI)[0].tolist() == ref["input_ids"].tolist()
    # The same run as the CLI's (which hooks are cached decides where the forward fuses
    # its ops, so the same hooks give the same bits).
    hooks = ["blocks.0.hook_resid_pre", "blocks.17.hook_resid_pre", "blocks.29.hook_resid_pre", "blocks.23.attn.hook_pattern", "blocks.23.attn.hook_z"]
    _, same = smollm2.run_with_cache(IOI, names_filter=hooks)
    rust = rust_cache("smollm2-135m", IOI, hooks, tmp_path)
    for h in hooks:
        assert np.array_equal(same[h], rust[h]), h
    logits, cache = smollm2.run_with_cache(IOI)
    # 1e-3 absolute, relative above 1: SmolLM2's first position carries a massive activation
    # (dimension 507 reaches 2.5e4 by layer 20), where float32 rounding alone is 2e-3.
    for l in range(smollm2.cfg.n_layers):
        ours, theirs = cache[f"blocks.{l}.hook_resid_pre"][0], ref[f"blocks.{l}.hook_resid_pre"]
        worst = (np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))).max()
        assert worst <= 1e-3, (l, worst)
    # The short keys of TransformerLens.
    assert np.array_equal(cache["pattern", 23], cache["blocks.23.attn.hook_pattern"])
    assert np.array_equal(cache["resid_pre", 17], cache["blocks.17.hook_resid_pre"])
    assert glassbox.utils.get_act_name("scale", 3, "ln2") == "blocks.3.ln2.hook_scale"
    assert logits.shape == (1, 15, smollm2.cfg.d_vocab)
    assert "blocks.23.attn.hook_pattern" in cache and len(cache) == len(cache.keys())


def test_cache_helpers_sum_to_the_residual_stream(smollm2):
    _, cache = smollm2.run_with_cache(IOI)
    resid = cache["blocks.29.hook_resid_post"]
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and labels[-1] == "29_mlp_out"
    assert np.abs(parts.sum(0) - resid).max() <= 1e-3 * np.abs(resid).max()
    acc = cache.accumulated_resid(layer=None)
    assert np.array_equal(acc[-1], resid)
    # Direct effects of the heads at the last position: logit_attrs puts the raw stack through
    # the frozen final norm itself (as TransformerLens); apply_weight=True includes the norm's
    # weight, which glassbox does not fold into W_U.
    heads, hl = cache.stack_head_results(layer=None, pos_slice=-1, return_labels=True)
    # An int pos_slice drops the position axis, as in TransformerLens.
    assert heads.shape == (30 * 9, 1, 576) and hl[0] == "L0H0"
    attrs = cache.logit_attrs(heads, " Mary", " John", pos_slice=-1, apply_weight=True)
    assert attrs.shape == (30 * 9, 1)
    lens = glassbox.GlassboxV2(smollm2).logit_lens(IOI, " Mary", " John")
    np.testing.assert_allclose(attrs[:, 0].reshape(30, 9), np.array([lens["head_direct_effects"][layer] for layer in range(30)]), atol=1e-4)
    # The same through the stacking helper's apply_ln and the plain unembedding columns.
    normed = cache.stack_head_results(layer=None, pos_slice=-1, apply_ln=True, apply_weight=True)
    direction = smollm2.W_U[:, smollm2.to_single_token(" Mary")] - smollm2.W_U[:, smollm2.to_single_token(" John")]
    np.testing.assert_allclose(normed @ direction, attrs, atol=1e-4)
    # Without the weight (TransformerLens' default without folding) the figures differ.
    assert np.abs(cache.logit_attrs(heads, " Mary", " John", pos_slice=-1) - attrs).max() > 1e-3
    with pytest.raises(glassbox.InputError, match="recompute_ln"):
        cache.apply_ln_to_stack(heads, pos_slice=-1, recompute_ln=True, apply_weight=True)


def zero_head_hook(head):
    def hook(z, hook):
        z = z.copy()
        z[:, :, head, :] = 0.0
        return z
    return hook


def test_python_hook_equals_declarative_zero_ablation(smollm2):
    py = smollm2.run_with_hooks(IOI, fwd_hooks=[("blocks.23.attn.hook_z", zero_head_hook(3))])
    decl = smollm2.run_with_hooks(IOI, interventions=[glassbox.Intervention("blocks.23.attn.hook_z", "zero", heads=[3])])
    plain = smollm2(IOI)
    assert np.abs(py - decl).max() <= 1e-6
    assert np.abs(py - plain).max() > 1e-3, "ablating L23H3 changed nothing"


def test_a_hook_returning_none_changes_nothing_and_in_place_edits_count(tiny_llama):
    seen = []

    def look(act, hook):
        seen.append((hook.name, act.shape))

    out = tiny_llama.run_with_hooks(IOI, fwd_hooks=[(lambda name: name.endswith("hook_z"), look)])
    assert np.array_equal(out, tiny_llama(IOI))
    assert [n for n, _ in seen] == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]

    def in_place(z, hook):
        z[:, :, 1, :] = 0.0  # TransformerLens style: edit and return nothing

    edited = tiny_llama.run_with_hooks(IOI, fwd_hooks=[("blocks.1.attn.hook_z", in_place)])
    decl = tiny_llama.run_with_hooks(IOI, interventions=[glassbox.Intervention("blocks.1.attn.hook_z", "zero", heads=[1])])
    assert np.abs(edited - decl).max() <= 1e-6


class Boom(Exception):
    pass


def test_an_exception_in_a_hook_propagates_as_itself(tiny_llama):
    def explode(act, hook):
        raise Boom(f"at {hook.name}")

    with pytest.raises(Boom, match="at blocks.0.hook_resid_post"):
        tiny_llama.run_with_hooks(IOI, fwd_hooks=[("blocks.0.hook_resid_post", explode)])
    with pytest.raises(Boom):
        tiny_llama.generate("Hello", max_new_tokens=3, fwd_hooks=[("blocks.0.hook_resid_post", explode)])


def test_bad_input_raises_with_the_message(tiny_llama, smollm2):
    m = tiny_llama
    with pytest.raises(glassbox.InputError, match="hook_sccores"):
        m.run_with_cache(IOI, names_filter=["blocks.0.attn.hook_sccores"])
    with pytest.raises(glassbox.InputError, match="layer 7"):
        m.run_with_hooks(IOI, fwd_hooks=[("blocks.7.hook_resid_pre", lambda a, h: None)])
    with pytest.raises(glassbox.InputError, match="shape"):
        m.run_with_hooks(IOI, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a[:, :-1])])
    with pytest.raises(glassbox.InputError, match="tokens"):
        smollm2.to_single_token(" Mary and")
    with pytest.raises(glassbox.InputError):
        glassbox.GlassboxV2(smollm2).analyze(IOI, " Mary and", " John")
    with pytest.raises(glassbox.InputError, match="same token"):
        glassbox.GlassboxV2(m).analyze(IOI, " Mary", " Mary")
    with pytest.raises(glassbox.InputError):
        m("")
    with pytest.raises(glassbox.InputError, match="outside the vocabulary"):
        m([1, 2, 10 ** 6])
    with pytest.raises(TypeError):
        m(3.5)
    with pytest.raises(glassbox.InputError, match="does not fit"):
        m.run_with_hooks(IOI, interventions=[glassbox.Intervention("blocks.0.hook_resid_pre", "add", value=np.ones(7))])
    with pytest.raises(glassbox.NonFiniteError):
        glassbox.Intervention("blocks.0.hook_resid_pre", "add", value=np.array([np.nan]))
    with pytest.raises(glassbox.InputError, match="unknown intervention"):
        glassbox.Intervention("blocks.0.hook_resid_pre", "scale")
    with pytest.raises(glassbox.ModelLoadError):
        glassbox.Model.load("/nonexistent/model.gguf")
    with pytest.raises(glassbox.InputError, match="max_new_tokens"):
        m.generate("Hello", max_new_tokens=0)
    with pytest.raises(glassbox.InputError, match="unknown metric"):
        glassbox.GlassboxV2(m).attribution_patching(IOI, None, " Mary", " John", metric="accuracy")
    assert issubclass(glassbox.InputError, glassbox.GlassboxError)


def test_gradients_against_finite_differences(tiny_llama):
    m = tiny_llama
    at = "blocks.1.hook_resid_pre"
    g = m.grad(IOI, at=[at], correct=" Mary", incorrect=" John")[at]
    _, cache = m.run_with_cache(IOI, names_filter=[at])
    base = cache[at]
    mary, john = m.to_single_token(" Mary"), m.to_single_token(" John")

    def ld(delta):
        logits = m.run_with_hooks(IOI, interventions=[glassbox.Intervention(at, "add", value=delta)])
        return float(logits[0, -1, mary] - logits[0, -1, john])

    rng = np.random.default_rng(0)
    d = rng.standard_normal(base.shape).astype(np.float32)
    eps = 1e-2
    fd = (ld(eps * d) - ld(-eps * d)) / (2 * eps)
    assert abs(fd - float((g * d).sum())) <= 1e-2 * max(1.0, abs(fd))
    lp = m.grad(IOI, at=[at], correct=" Mary", metric="logprob")[at]
    assert lp.shape == base.shape and not np.array_equal(lp, g)


def test_generate(smollm2, tiny_llama):
    text = smollm2.generate("The capital of France is", max_new_tokens=5)
    assert text.startswith("The capital of France is Paris")
    g = smollm2.generate("The capital of France is", max_new_tokens=5, return_type="dict")
    assert g["stop"] == "max_new_tokens" and len(g["tokens"]) == 5
    a = tiny_llama.generate(IOI, max_new_tokens=8, temperature=1.5, seed=3, stop_at_eos=False, return_type="tokens")
    b = tiny_llama.generate(IOI, max_new_tokens=8, temperature=1.5, seed=3, stop_at_eos=False, return_type="tokens")
    assert a == b
    steered = tiny_llama.generate(IOI, max_new_tokens=8, stop_at_eos=False, return_type="tokens",
                                  interventions=[glassbox.Intervention("blocks.1.hook_resid_pre", "add", value=np.full(64, 3.0) * (np.arange(64) % 3 - 1))])
    assert steered != tiny_llama.generate(IOI, max_new_tokens=8, stop_at_eos=False, return_type="tokens")
    # TransformerLens' switches: temperature 0 and do_sample=False are greedy.
    greedy = tiny_llama.generate(IOI, max_new_tokens=8, stop_at_eos=False, return_type="tokens")
    assert tiny_llama.generate(IOI, max_new_tokens=8, temperature=0.0, stop_at_eos=False, return_type="tokens") == greedy
    assert tiny_llama.generate(IOI, max_new_tokens=8, temperature=1.5, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False) == greedy
    with pytest.raises(glassbox.InputError, match="max_tokens.*max_new_tokens"):
        tiny_llama.generate(IOI, max_tokens=8)
    with pytest.raises(glassbox.InputError, match="temperature"):
        tiny_llama.generate(IOI, temperature=-1.0)


def test_loss(tiny_llama):
    loss = tiny_llama(IOI, return_type="loss")
    logits = tiny_llama(IOI)[0]
    ids = tiny_llama.to_tokens(IOI)[0]
    lse = np.log(np.exp(logits[:-1] - logits[:-1].max(-1, keepdims=True)).sum(-1)) + logits[:-1].max(-1)
    want = (lse - logits[np.arange(len(ids) - 1), ids[1:]]).mean()
    assert loss.shape == (1,) and abs(float(loss[0]) - want) <= 1e-4


def test_threads_run_together(tiny_llama):
    """Hooks calling back into Python from several threads at once do not deadlock (the GIL
    is released around the forward and taken again for each hook)."""
    results = [None] * 4

    def work(i):
        results[i] = tiny_llama.run_with_hooks(IOI, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_hook(i % 4))])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    assert np.array_equal(results[0], tiny_llama.run_with_hooks(IOI, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_hook(0))]))


def test_glassbox_methods_beyond_the_reference(tiny_llama):
    gb = glassbox.GlassboxV2(tiny_llama)
    p = gb.exact_patching(IOI, None, " Mary", " John")
    assert len(p["heads"]) == tiny_llama.cfg.n_layers
    pp = gb.path_patching(IOI, None, " Mary", " John", receiver={"q": [1, 0]})
    assert pp
    kl = gb.attribution_patching(IOI, None, " Mary", " John", metric="kl")[0]
    assert len(kl) == tiny_llama.cfg.n_layers * tiny_llama.cfg.n_heads
    f = gb.faithfulness(IOI, None, " Mary", " John", circuit=[(0, 1), (1, 2)])
    assert 0 <= f["f1"] <= 1
    eapig = gb.edge_attribution_patching(IOI, None, " Mary", " John", method="eap-ig", n_steps=5)
    assert eapig["method"] == "integrated_gradients"


def test_lists_of_prompts_where_one_prompt_is_taken(tiny_llama):
    """TransformerLens code passes lists: each prompt is done alone, the answers in a list."""
    prompts = [IOI, "The cat sat on the"]
    toks = tiny_llama.to_str_tokens(prompts)
    assert toks == [tiny_llama.to_str_tokens(p) for p in prompts]
    ids = tiny_llama.to_tokens(IOI)
    assert tiny_llama.to_str_tokens(ids) == tiny_llama.to_str_tokens(IOI)
    assert tiny_llama.to_string(np.concatenate([ids, ids])) == [tiny_llama.to_string(ids)] * 2
    texts = tiny_llama.generate(prompts, max_new_tokens=3)
    assert texts == [tiny_llama.generate(p, max_new_tokens=3) for p in prompts]
    grads = tiny_llama.grad(prompts, at=["blocks.0.hook_resid_pre"], correct=" Mary", incorrect=" John")
    assert len(grads) == 2
    one = tiny_llama.grad(IOI, at=["blocks.0.hook_resid_pre"], correct=" Mary", incorrect=" John")
    assert np.array_equal(grads[0]["blocks.0.hook_resid_pre"], one["blocks.0.hook_resid_pre"])
    with pytest.raises(TypeError, match="a prompt"):
        tiny_llama.to_str_tokens(3.5)


def test_transformer_lens_arguments(tiny_llama, smollm2):
    """Arguments TransformerLens code passes (issue 28)."""
    m = tiny_llama
    logits, cache = m.run_with_cache(IOI)
    per_token = m(IOI, return_type="loss", loss_per_token=True)
    assert per_token.shape == (1, logits.shape[1] - 1)
    np.testing.assert_allclose(per_token.mean(), m(IOI, return_type="loss")[0], rtol=1e-6)
    ragged = m([IOI, "The cat sat on the"], return_type="loss", loss_per_token=True)
    assert isinstance(ragged, list) and len(ragged[1]) == len(m.to_str_tokens("The cat sat on the")) - 1
    for layer, name in [(1, "blocks.1.hook_resid_pre"), (-1, "blocks.1.hook_resid_pre"), (0, "blocks.0.hook_resid_pre")]:
        np.testing.assert_allclose(m(IOI, stop_at_layer=layer), cache[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(glassbox.InputError, match="stop_at_layer"):
        m(IOI, stop_at_layer=5)
    loss, c2 = m.run_with_cache(IOI, return_type="loss", remove_batch_dim=True)
    assert loss.shape == (1,) and c2["blocks.0.hook_resid_pre"].shape == cache["blocks.0.hook_resid_pre"].shape[1:]
    with pytest.raises(glassbox.InputError, match="one prompt"):
        m.run_with_cache([IOI, IOI], remove_batch_dim=True)
    np.testing.assert_allclose(m.run_with_hooks(IOI, fwd_hooks=[], bwd_hooks=[]), m(IOI), rtol=0, atol=0)
    with pytest.raises(glassbox.InputError, match="model.grad"):
        m.run_with_hooks(IOI, bwd_hooks=[("blocks.0.hook_resid_pre", lambda g, hook: None)])
    plain = smollm2.to_tokens(IOI)
    bos = smollm2.to_tokens(IOI, prepend_bos=True)
    none = smollm2.to_tokens(IOI, prepend_bos=False)
    assert bos.shape[1] == none.shape[1] + 1 and np.array_equal(bos[0, 1:], none[0])
    assert np.array_equal(plain, bos) or np.array_equal(plain, none)
    right = m.to_tokens([IOI, "The cat"])
    left = m.to_tokens([IOI, "The cat"], padding_side="left")
    n = len(m.to_tokens("The cat")[0])
    assert np.array_equal(left[1, -n:], right[1, :n]) and (left[1, :-n] == 0).all()
    with pytest.raises(glassbox.InputError, match="padding_side"):
        m.to_tokens(IOI, padding_side="middle")


def test_the_tokenizer_as_transformer_lens_code_reaches_it(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode(IOI)
    assert ids == [int(i) for i in smollm2.to_tokens(IOI, prepend_bos=True)[0]]
    assert tok.encode(IOI, add_special_tokens=False) == ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == IOI
    assert tok(IOI)["input_ids"] == ids and tok([IOI, "Hi"])["input_ids"][0] == ids
    assert ids[0] == tok.bos_token_id and tok.vocab_size == len(tok) == smollm2.cfg.d_vocab
    assert len(tok.convert_ids_to_tokens(ids)) == len(ids)
    with pytest.raises(glassbox.InputError, match="outside the vocabulary"):
        tok.decode([-1])
