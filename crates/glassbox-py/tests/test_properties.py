"""Property tests (hypothesis) over what Python hands glassbox (issue 30 item 4): arrays
returned by hooks (every dtype, shape, memory order, NaN and infinity, non-arrays), option
dicts and inputs. Every call ends in finite results or in a glassbox error (or TypeError)
with a message; none crashes the interpreter, hangs or returns NaN."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import glassbox

from conftest import IOI

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_q", "ln_final.hook_normalized"]
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int8, np.uint8, np.bool_, np.complex64]
CLEAR = (glassbox.GlassboxError, TypeError)


def clear_error(e):
    assert str(e).strip(), f"{type(e).__name__} without a message"


@pytest.fixture(scope="module")
def shapes(tiny_llama):
    _, cache = tiny_llama.run_with_cache(IOI)
    return {h: tuple(cache[h].shape) for h in HOOKS}


def returned_values(shape):
    """Arrays and other things a hook may return for an activation of `shape`."""
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    same = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(dt, shape, elements=floats if np.issubdtype(dt, np.floating) else None))
    finite_same = hnp.arrays(np.float32, shape, elements=st.floats(-10, 10, width=32))
    wrong = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=5, max_side=6), elements=st.floats(-1, 1, width=32))
    strided = finite_same.map(lambda a: np.repeat(a, 2, axis=-1)[..., ::2])
    fortran = finite_same.map(np.asfortranarray)
    other = st.sampled_from([3, "text", [1, 2], {"a": 1}, object(), np.array(["a"]), np.array([None], dtype=object)])
    return st.one_of(same, finite_same, wrong, strided, fortran, other)


@SETTINGS
@given(data=st.data())
def test_hook_return_values(tiny_llama, shapes, data):
    hook = data.draw(st.sampled_from(HOOKS))
    value = data.draw(returned_values(shapes[hook]))
    try:
        logits = tiny_llama.run_with_hooks(IOI, fwd_hooks=[(hook, lambda act, hook: value)])
    except CLEAR as e:
        clear_error(e)
        return
    assert np.isfinite(logits).all()
    assert not (isinstance(value, np.ndarray) and value.dtype.kind not in "fiub"), f"a {value.dtype} array was read as numbers"
    if isinstance(value, np.ndarray) and value.shape == shapes[hook] and value.dtype.kind == "f":
        # What ran is the value itself (as float32), whatever its memory order.
        want = tiny_llama.run_with_hooks(IOI, fwd_hooks=[(hook, lambda act, hook: np.ascontiguousarray(value, dtype=np.float32))])
        assert np.array_equal(logits, want)


@SETTINGS
@given(data=st.data())
def test_in_place_edits(tiny_llama, shapes, data):
    hook = data.draw(st.sampled_from(HOOKS))
    x = data.draw(st.sampled_from([0.0, -1.0, 1e30, np.nan, np.inf, 3.5]))

    def edit(act, hook):
        act[..., :1] = x

    try:
        logits = tiny_llama.run_with_hooks(IOI, fwd_hooks=[(hook, edit)])
    except CLEAR as e:
        clear_error(e)
        return
    assert np.isfinite(logits).all()


def option_values():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20), st.lists(st.integers(-3, 40), max_size=4), st.sampled_from(["taylor", "integrated_gradients", "ig", "bos", "zero", "L0H1", "L9H9", "mlp", "head", "logit_diff", "kl"]),
    )


OPTION_KEYS = ["method", "n_steps", "component", "baseline", "metric", "top_k", "positions", "heads", "methdo", "n_corruptions", "target", "seed", ""]


@SETTINGS
@given(method=st.sampled_from(["attribution", "analyze", "logit-lens", "patch", "edges", "token-attribution", "stability"]), options=st.dictionaries(st.sampled_from(OPTION_KEYS), option_values(), max_size=3))
def test_option_dicts(tiny_llama, method, options):
    if options.get("n_corruptions") not in (None,) and isinstance(options.get("n_corruptions"), int) and options["n_corruptions"] > 200:
        options["n_corruptions"] = 200  # valid large counts only cost time
    if isinstance(options.get("n_steps"), int) and options["n_steps"] > 64:
        options["n_steps"] = 64
    try:
        env = glassbox.run(method, tiny_llama, {"prompt": IOI, "correct": " Mary", "incorrect": " John"}, options)
    except CLEAR as e:
        clear_error(e)
        return
    assert env["method"] == method


@SETTINGS
@given(prompt=st.text(max_size=200), correct=st.text(max_size=8), incorrect=st.text(max_size=8))
def test_inputs(tiny_llama, prompt, correct, incorrect):
    try:
        env = glassbox.run("attribution", tiny_llama, {"prompt": prompt, "correct": correct, "incorrect": incorrect})
    except CLEAR as e:
        clear_error(e)
        return
    assert env["method"] == "attribution"
