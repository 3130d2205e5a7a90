"""SAEs from Python: loading SAELens' folders and Gemma Scope's parameters, encode equal to
sae-lens' (the fixtures' expected activations, written by the real package), and the
reference tool's SAEFeatureAttributor."""

import numpy as np
import pytest

import glassbox
from conftest import FIXTURES, IOI, read_safetensors

SAES = FIXTURES / "sae"


@pytest.mark.parametrize("name", ["standard", "topk", "jumprelu", "gated", "layernorm", "hook_z", "transcoder", "old_topk"])
def test_encode_equals_sae_lens(name):
    sae = glassbox.SAE.load(str(SAES / name))
    exp = read_safetensors(SAES / name / "expected.safetensors")
    acts = sae.encode(exp["x"])
    np.testing.assert_allclose(acts, exp["acts"].reshape(acts.shape), rtol=1e-5, atol=1e-5)
    rec = sae.reconstruct(exp["x"])
    np.testing.assert_allclose(rec, exp["recon"].reshape(rec.shape), rtol=1e-4, atol=1e-4)


def test_gemma_scope_and_errors():
    with pytest.raises(glassbox.InputError, match="hook"):
        glassbox.SAE.load(str(SAES / "gemma_scope"))
    sae = glassbox.SAE.load(str(SAES / "gemma_scope"), hook="blocks.0.hook_resid_post")
    assert sae.cfg["format"] == "gemma-scope"
    with pytest.raises(glassbox.GlassboxError):
        glassbox.SAE.load(str(SAES / "no-such-sae"))
    with pytest.raises(glassbox.InputError, match="reads 64 values"):
        sae.encode(np.zeros((3, 5), dtype=np.float32))


def test_sae_feature_attributor(tiny_llama):
    sfa = glassbox.SAEFeatureAttributor(tiny_llama, [SAES / "standard", SAES / "transcoder"])
    r = sfa.attribute(tiny_llama.to_tokens(IOI), " Mary", " John", top_k=5)
    assert isinstance(r, glassbox.Result)
    feats = r["top_features"]
    assert len(feats) == 5 and len(r["per_sae"]) == 2
    assert all(abs(a["ld_contribution"]) >= abs(b["ld_contribution"]) for a, b in zip(feats, feats[1:]))
    f = r["per_sae"][0]["top_features"][0]
    assert f["neuronpedia_url"] == f"https://www.neuronpedia.org/tiny-llama/0-res-test/{f['feature_id']}"
    assert f["direction"] in ("target", "distractor") and f["exact_effect"] is not None
    only0 = sfa.attribute(tiny_llama.to_tokens(IOI), " Mary", " John", layers=[0])
    assert len(only0["per_sae"]) == 1 and only0["per_sae"][0]["direct"]["decomposition_residual"] < 1e-4
    assert "<svg" in only0._repr_svg_()
    with pytest.raises(glassbox.InputError, match="no SAE at layers"):
        sfa.attribute(tiny_llama.to_tokens(IOI), " Mary", " John", layers=[5])


def test_attribute_circuit_heads(tiny_llama):
    sfa = glassbox.SAEFeatureAttributor(tiny_llama, [SAES / "standard", SAES / "hook_z"])
    r = sfa.attribute_circuit_heads([(0, 1), (0, 3)], tiny_llama.to_tokens(IOI), " Mary", " John", top_k=3)
    assert list(r) == ["blocks.0.hook_resid_post"], "only the residual-stream SAE after the heads"
    res = r["blocks.0.hook_resid_post"]
    assert "linear" in res["approximation"]
    assert [h["head"] for h in res["heads"]] == ["L00H01", "L00H03"]
    assert all(len(h["top_features"]) == 3 for h in res["heads"])
    with pytest.raises(glassbox.InputError, match="further on"):
        sfa.attribute_circuit_heads([(1, 0)], tiny_llama.to_tokens(IOI), " Mary", " John")


def test_sae_objects_as_sae_lens_users_hold_them(tiny_llama):
    """Leading axes kept, decode, forward, the parameters by SAELens' names, and a
    reconstruction spliced into a hook (issue 28)."""
    sae = glassbox.SAE.load(str(SAES / "standard"))
    _, cache = tiny_llama.run_with_cache([IOI, IOI])
    x = cache[sae.hook_name]
    assert x.ndim == 3
    acts = sae.encode(x)
    assert acts.shape == x.shape[:-1] + (sae.cfg["d_sae"],)
    np.testing.assert_allclose(acts.reshape(-1, acts.shape[-1]), sae.encode(x.reshape(-1, x.shape[-1])), rtol=1e-6, atol=1e-6)
    rec = sae.reconstruct(x)
    assert rec.shape == x.shape
    np.testing.assert_allclose(sae.decode(acts), rec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.forward(x), rec)
    np.testing.assert_allclose(sae(x), rec)
    np.testing.assert_allclose(acts @ sae.W_dec + sae.b_dec, rec, rtol=1e-5, atol=1e-5)
    assert sae.W_enc.shape == (sae.cfg["d_in"], sae.cfg["d_sae"]) and sae.b_enc.shape == (sae.cfg["d_sae"],)
    assert np.array_equal(sae.W_enc, sae.w_enc)
    # One position alone, and a reconstruction in place of the activation.
    assert sae.encode(x[0, -1]).shape == (sae.cfg["d_sae"],)
    logits = tiny_llama.run_with_hooks(IOI, fwd_hooks=[(sae.hook_name, lambda act, hook: sae.reconstruct(act))])
    assert logits.shape[-1] == tiny_llama.cfg.d_vocab and np.isfinite(logits).all()
    with pytest.raises(glassbox.InputError, match="features"):
        sae.decode(np.zeros((2, 3), dtype=np.float32))
    z = glassbox.SAE.load(str(SAES / "hook_z"))
    zx = tiny_llama.run_with_cache(IOI)[1][z.hook_name]
    assert z.encode(zx).shape == zx.shape[:-2] + (z.cfg["d_sae"],)
    assert z.reconstruct(zx).shape == zx.shape
    ln = glassbox.SAE.load(str(SAES / "layernorm"))
    with pytest.raises(glassbox.InputError, match="reconstruct"):
        ln.decode(np.zeros((1, ln.cfg["d_sae"]), dtype=np.float32))
