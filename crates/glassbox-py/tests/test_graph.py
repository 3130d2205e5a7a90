"""Attribution graphs from Python: the pruned graph through the catalog function, the full
adjacency as a coordinate triple with its node table, and the two agree."""

import glassbox
from conftest import FIXTURES

IOI = {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}


def test_the_adjacency_triple_matches_the_graph():
    model = glassbox.Model.load(str(FIXTURES / "tiny-llama"))
    tset = glassbox.TranscoderSet.load(str(FIXTURES / "transcoders" / "tiny-llama"))
    assert len(tset) == 2 and tset[0].hook_name == "blocks.0.ln2.hook_normalized"
    g = glassbox.attribution_graph(model, IOI, {"max_feature_nodes": 0}, transcoders=tset)
    g = g.envelope["result"] if hasattr(g, "envelope") else g
    a = tset.adjacency(model, IOI, {"max_feature_nodes": 0})
    n = a["shape"][0]
    assert a["shape"] == [n, n] and len(a["nodes"]) == n
    assert len(a["rows"]) == len(a["cols"]) == len(a["values"]) == g["glassbox"]["n_edges"]
    assert n == g["glassbox"]["n_nodes"]
    kinds = [x["kind"] for x in a["nodes"]]
    assert kinds[-1] == "logit" and kinds.count("token") == len(g["metadata"]["prompt_tokens"])
    # Edges run from earlier layers and positions: no feature feeds a feature of its own layer or above.
    for r, c in zip(a["rows"], a["cols"]):
        src, dst = a["nodes"][c], a["nodes"][r]
        assert dst["kind"] in ("feature", "logit")
        if src["kind"] in ("feature", "error") and dst["kind"] == "feature":
            assert src["layer"] < dst["layer"] and src["position"] <= dst["position"]


def test_a_graph_without_transcoders_says_what_it_needs():
    model = glassbox.Model.load(str(FIXTURES / "tiny-llama"))
    try:
        glassbox.attribution_graph(model, IOI)
    except glassbox.GlassboxError as e:
        assert "transcoder" in str(e)
    else:
        raise AssertionError("no error")
