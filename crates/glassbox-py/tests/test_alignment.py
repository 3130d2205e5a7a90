"""Cross-model circuit alignment (FCAS) with the reference tool's call, and its definition."""

import pytest

import glassbox
from conftest import IOI


def test_fcas_as_the_reference_calls_it(smollm2, tiny_llama):
    gb_sm, gb_md = glassbox.GlassboxV2(smollm2), glassbox.GlassboxV2(tiny_llama)
    r_sm = gb_sm.analyze(IOI, " Mary", " John")
    r_md = gb_md.analyze(IOI, " Mary", " John")
    fcas = gb_sm.functional_circuit_alignment(r_sm["top_heads"], r_md["top_heads"], top_k=5)
    assert set(fcas) >= {"fcas", "z_score", "null_mean", "null_std", "p_value", "pairs"}
    la, lb = smollm2.cfg.n_layers, tiny_llama.cfg.n_layers
    want = 1 - sum(abs(a["layer"] / (la - 1) - b["layer"] / (lb - 1)) for a, b in zip(r_sm["top_heads"][:5], r_md["top_heads"][:5])) / 5
    assert fcas["fcas"] == pytest.approx(want, abs=1e-6)
    assert fcas["z_score"] == pytest.approx((fcas["fcas"] - fcas["null_mean"]) / fcas["null_std"], rel=1e-4)
    assert 0 < fcas["p_value"] <= 1
    # Identical rankings align perfectly and stand out from the null.
    same = gb_sm.functional_circuit_alignment(r_sm["top_heads"], r_sm["top_heads"], top_k=5)
    assert same["fcas"] == pytest.approx(1.0) and same["z_score"] > 2
    with pytest.raises(glassbox.InputError, match="shape"):
        gb_sm.functional_circuit_alignment(r_sm["top_heads"], [(1, 2), (0, 3)], top_k=2)
    ok = gb_sm.functional_circuit_alignment(r_sm["top_heads"], [(1, 2), (0, 3)], top_k=2, model_b=tiny_llama)
    assert 0 <= ok["fcas"] <= 1
    with pytest.raises(glassbox.InputError, match="top_k"):
        gb_sm.functional_circuit_alignment(r_sm["top_heads"], [(1, 2)], top_k=2, model_b=tiny_llama)


def test_composition_baseline_against_numpy(tiny_llama):
    """The random-heads baseline equals a numpy Monte Carlo of the same definition, computed
    with the full d_model × d_model products (not glassbox's Gram-matrix route)."""
    import numpy as np
    cfg = tiny_llama.cfg
    dh, dm = cfg.d_head, cfg.d_model
    rng = np.random.default_rng(0)
    fro = np.linalg.norm
    q, k, v = [], [], []
    for _ in range(400):
        wq, wk, wv = (rng.standard_normal((dh, dm)) for _ in range(3))
        wo = rng.standard_normal((dm, dh))
        rq, rk, rv = (rng.standard_normal((dh, dm)) for _ in range(3))
        ro = rng.standard_normal((dm, dh))
        ov_s = wo @ wv
        qk_r = rq.T @ rk
        ov_r = ro @ rv
        q.append(fro(qk_r.T @ ov_s) / (fro(qk_r) * fro(ov_s)))
        k.append(fro(qk_r @ ov_s) / (fro(qk_r) * fro(ov_s)))
        v.append(fro(ov_r @ ov_s) / (fro(ov_r) * fro(ov_s)))
    comp = glassbox.HeadCompositionAnalyzer(tiny_llama).all_composition_scores([(0, 1), (1, 2)])
    b = comp["baseline"]
    for name, xs in (("q", q), ("k", k), ("v", v)):
        se = np.std(xs) / np.sqrt(b["n_samples"])
        assert abs(b[name] - np.mean(xs)) < 4 * se + 1e-3, (name, b[name], np.mean(xs), se)
    e = comp["combined_edges"][0]
    assert e["q_excess"] == pytest.approx(e["q"] - b["q"], abs=1e-6)
