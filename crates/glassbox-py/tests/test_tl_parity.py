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
def cache():
    model = glassbox.Model.load(str(FOLDER), prepend_bos=False)
    _, cache = model.run_with_cache([RECORD["tokens"]])
    return cache


def parse(key):
    """`name,arg=value,...` → (name, kwargs), values as Python literals."""
    name, *args = key.split(",")
    kwargs = {}
    for a in args:
        if "=" not in a:
            kwargs[a] = True
            continue
        k, v = a.split("=")
        kwargs[k] = None if v == "None" else int(v)
    return name, kwargs


def glassbox_value(cache, key):
    if re.match(r"^\w+,-?\d+$", key):
        name, layer = key.split(",")
        return cache[name, int(layer)]
    name, kw = parse(key)
    if name == "accumulated_resid":
        return cache.accumulated_resid(layer=kw.get("layer"), incl_mid=kw.get("incl_mid", False), pos_slice=kw.get("pos_slice"))
    if name == "decompose_resid":
        return cache.decompose_resid(layer=kw.get("layer"), pos_slice=kw.get("pos_slice"))
    if name == "stack_head_results":
        return cache.stack_head_results(layer=kw.get("layer"), pos_slice=kw.get("pos_slice"))
    raise KeyError(key)


@pytest.mark.parametrize("key", sorted(RECORD["cases"]))
def test_cache_helpers_match_transformer_lens(cache, key):
    want = RECORD["cases"][key]
    got = np.asarray(glassbox_value(cache, key), dtype=np.float64)
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
