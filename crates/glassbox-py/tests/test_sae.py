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
