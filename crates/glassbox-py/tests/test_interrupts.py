"""Ctrl-C and threads (issue 30 item 6): a KeyboardInterrupt stops a long method within a
second and leaves the model usable; several threads calling methods on one model get the
results of sequential calls."""

import _thread
import threading
import time

import numpy as np
import pytest

import glassbox

from conftest import IOI

CONTRAST = {"prompt": IOI, "correct": " Mary", "incorrect": " John"}


def test_ctrl_c_stops_exact_patching_within_a_second(smollm2):
    # Exact patching of every head of SmolLM2 takes several seconds; Ctrl-C 0.5 s in.
    timer = threading.Timer(0.5, _thread.interrupt_main)
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            glassbox.run("patch", smollm2, CONTRAST)
        took = time.monotonic() - t0
    finally:
        timer.cancel()
    assert took < 2.0, f"the interrupt surfaced {took - 0.5:.2f} s after Ctrl-C"
    # The model is still usable, and gives what it gave before.
    a = glassbox.run("logit-lens", smollm2, CONTRAST)["result"]
    b = glassbox.run("logit-lens", smollm2, CONTRAST)["result"]
    assert a == b


def test_ctrl_c_stops_a_forward_loop_between_calls(tiny_llama):
    timer = threading.Timer(0.3, _thread.interrupt_main)
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            while time.monotonic() - t0 < 20:
                glassbox.run("stability", tiny_llama, CONTRAST, {"n_corruptions": 500})
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 1.5
    assert tiny_llama.run_with_cache(IOI)[0].shape[-1] == tiny_llama.cfg.d_vocab


@pytest.mark.parametrize("method,options", [("attribution", {}), ("patch", {}), ("analyze", {}), ("logit-lens", {})])
def test_threads_on_one_model_give_sequential_results(tiny_llama, method, options):
    want = glassbox.run(method, tiny_llama, CONTRAST, options)["result"]
    got = [None] * 4
    errors = []

    def work(i):
        try:
            got[i] = glassbox.run(method, tiny_llama, CONTRAST, options)["result"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for g in got:
        assert g == want


def test_threads_mixing_forwards_and_methods(tiny_llama):
    logits = tiny_llama.run_with_cache(IOI)[0]
    want = glassbox.run("attribution", tiny_llama, CONTRAST)["result"]
    out = {}

    def forwards():
        out["logits"] = [tiny_llama.run_with_cache(IOI)[0] for _ in range(20)]

    def methods():
        out["methods"] = [glassbox.run("attribution", tiny_llama, CONTRAST)["result"] for _ in range(10)]

    ts = [threading.Thread(target=forwards), threading.Thread(target=methods)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert all(np.array_equal(x, logits) for x in out["logits"])
    assert all(m == want for m in out["methods"])
