"""Results display as their pictures in notebooks (``_repr_svg_``), ``.plot()`` returns the
SVG, and the picture's marks carry the result's figures (one cell per head, colour sign =
figure sign)."""

import pickle
import subprocess
import xml.etree.ElementTree as ET

import pytest

import glassbox
from conftest import IOI, IOI_CORRUPTED, glassbox_bin, FIXTURES


@pytest.fixture(scope="module")
def gb(tiny_llama):
    return glassbox.GlassboxV2(tiny_llama)


def marks(svg: str, cls: str):
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    return [e for e in root.iter() if e.get("class") == cls]


def sign_ok(fill: str, v: float, biggest: float) -> bool:
    r, b = int(fill[1:3], 16), int(fill[5:7], 16)
    if abs(v) < 0.02 * biggest:
        return True
    return r > b if v > 0 else b > r


def test_analysis_draws_itself(gb, tiny_llama, tmp_path):
    r = gb.analyze(IOI, " Mary", " John")
    assert isinstance(r, dict) and isinstance(r, glassbox.Result)
    svg = r._repr_svg_()
    assert svg == r.plot()
    cells = [c for c in marks(svg, "cell") if c.get("data-head") is not None]
    cfg = tiny_llama.cfg
    assert len(cells) == cfg.n_layers * cfg.n_heads
    biggest = max(abs(v) for v in r["attributions"].values())
    for c in cells:
        head = (int(c.get("data-layer")), int(c.get("data-head")))
        v = float(c.get("data-value"))
        assert v == pytest.approx(r["attributions"][head], rel=1e-5, abs=1e-6)
        assert sign_ok(c.get("fill"), v, biggest), (head, v, c.get("fill"))
    # The circuit: outlined in the heatmap and typed in the graph, as `glassbox analyze --plot`.
    assert len(marks(svg, "mark")) == len(r["circuit"])
    nodes = {n.get("data-id"): n.get("data-type") for n in marks(svg, "node")}
    for (layer, head) in r["circuit"]:
        assert nodes[f"L{layer:02d}H{head:02d}"], "typed by attention"
    # The same picture as the CLI draws, byte for byte.
    out = tmp_path / "analyze.svg"
    subprocess.run([str(glassbox_bin()), "analyze", "--model", str(FIXTURES / "tiny-llama"), "--prompt", IOI,
                    "--correct", " Mary", "--incorrect", " John", "--plot", str(out)], check=True, capture_output=True)
    assert out.read_text() == svg
    # Edits to the dict do not change the picture; pickling keeps it.
    r["attributions"].clear()
    assert r.plot() == svg
    assert pickle.loads(pickle.dumps(r)).plot() == svg


def test_every_method_result_has_a_picture(gb, tiny_llama):
    t = tiny_llama.to_tokens(IOI)
    tc = tiny_llama.to_tokens(IOI_CORRUPTED)
    results = {
        "attribution": gb.attribute(t, tc, " Mary", " John"),
        "logit-lens": gb.logit_lens(t, " Mary", " John"),
        "edges": gb.edge_attribution_patching(t, tc, " Mary", " John", top_k=10),
        "stability": gb.attribution_stability(t, " Mary", " John", n_corruptions=4),
        "token-attribution": gb.token_attribution(t, " Mary", " John"),
        "attention": gb.attention_patterns(t, heads=[(1, 2)]),
        "patch": gb.exact_patching(t, tc, " Mary", " John"),
        "path-patch": gb.path_patching(t, tc, " Mary", " John"),
        "composition": glassbox.HeadCompositionAnalyzer(tiny_llama).all_composition_scores([(0, 1), (1, 2)]),
    }
    for kind, r in results.items():
        assert isinstance(r, glassbox.Result) and r.kind == kind
        root = ET.fromstring(r._repr_svg_())
        assert root.get("class") == "glassbox-plot", kind
    # Figures: the logit-lens curve, the token colours, the attention cells.
    lens = results["logit-lens"]
    points = marks(lens.plot(), "point")
    assert [float(p.get("data-value")) for p in points] == pytest.approx(lens["logit_diffs"], rel=1e-5, abs=1e-6)
    toks = results["token-attribution"]
    rects = marks(toks.plot(), "token")
    assert len(rects) == len(toks["tokens"])
    n = len(results["attention"]["tokens"])
    assert len(marks(results["attention"].plot(), "cell")) == n * n
    edges = results["edges"]
    assert len(marks(edges.plot(), "edge")) == len(edges["top_edges"])


def test_plot_function_and_errors(gb, tiny_llama, tmp_path):
    t = tiny_llama.to_tokens(IOI)
    tc = tiny_llama.to_tokens(IOI_CORRUPTED)
    r = gb.exact_patching(t, tc, " Mary", " John")
    assert glassbox.plot("patch", dict(r)) == r.plot()
    with pytest.raises(glassbox.GlassboxError, match="no method `sankey`"):
        glassbox.plot("sankey", dict(r))
    with pytest.raises(glassbox.GlassboxError, match="not a `logit-lens` result"):
        glassbox.plot("logit-lens", dict(r))
    r.save(str(tmp_path / "patch.svg"))
    assert (tmp_path / "patch.svg").read_text() == r.plot()
    r.save(str(tmp_path / "patch.png"))
    assert (tmp_path / "patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(glassbox.InputError, match=".svg or .png"):
        r.save(str(tmp_path / "patch.pdf"))
    # A plain dict, as json.loads gives it, draws too.
    import json
    assert glassbox.plot("patch", json.loads(json.dumps(r.raw))) == r.plot()
