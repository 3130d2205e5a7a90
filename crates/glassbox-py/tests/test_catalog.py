"""Every catalog method from Python with the input and options of tests/catalog_cases.json,
against `glassbox <method> --json` on the same case (the Rust suite checks the CLI against the
library and the dashboard's API): the envelopes agree, numbers within 1e-5. Each method is
reached both through `glassbox.run` and through its generated function."""

import json
import math
import subprocess

import pytest

import glassbox
from conftest import FIXTURES, REPO, glassbox_bin

CASES = json.loads((REPO / "tests" / "catalog_cases.json").read_text())


def close(a, b, path):
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        assert a == b, f"{path}: {a!r} against {b!r}"
    elif isinstance(a, (int, float)):
        assert isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), f"{path}: {a} against {b}"
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{path}: keys {sorted(a)} against {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    else:
        raise AssertionError(f"{path}: unexpected {type(a)}")


def cli_envelope(name, case, needs):
    args = [str(glassbox_bin()), name, "--model", str(FIXTURES / CASES["model"]), "--json"]
    for k, v in case["input"].items():
        args += [f"--{k}", str(v)]
    args += case["cli"]
    if needs.get("sae"):
        args += ["--sae", str(FIXTURES / CASES["sae"])]
    if needs.get("model_b"):
        args += ["--model-b", str(FIXTURES / CASES["model_b"])]
    if needs.get("transcoders"):
        args += ["--transcoders", str(FIXTURES / CASES["transcoders"])]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def parts():
    return (glassbox.Model.load(str(FIXTURES / CASES["model"])),
            glassbox.SAE.load(str(FIXTURES / CASES["sae"])),
            glassbox.Model.load(str(FIXTURES / CASES["model_b"])),
            glassbox.TranscoderSet.load(str(FIXTURES / CASES["transcoders"])))


def test_every_catalog_method_has_a_case():
    names = {e["name"] for e in glassbox.methods()}
    assert names == set(CASES["cases"]), f"catalog {sorted(names)} against cases {sorted(CASES['cases'])}"


@pytest.mark.parametrize("entry", glassbox.methods(), ids=lambda e: e["name"])
def test_python_gives_the_cli_envelope(entry, parts):
    model, sae, model_b, transcoders = parts
    name, needs = entry["name"], entry["needs"]
    case = CASES["cases"][name]
    extra = {"sae": sae if needs.get("sae") else None, "model_b": model_b if needs.get("model_b") else None,
             "transcoders": transcoders if needs.get("transcoders") else None}
    env = glassbox.run(name, model, dict(case["input"]), dict(case["options"]), **extra)
    want = cli_envelope(name, case, needs)
    for k in ["method", "glassbox_version", "model", "input", "metric", "options", "warnings"]:
        close(env[k], want[k], f"{name}.{k}")
    close(env["result"], want["result"], f"{name}.result")
    assert sorted(env["options"]) == sorted(f["name"] for f in entry["options"]), "every option resolved"
    # The generated function runs the same method and keeps the envelope.
    fn = getattr(glassbox, entry["python_name"])
    r = fn(model, dict(case["input"]), dict(case["options"]), **extra)
    got = r.envelope["result"] if hasattr(r, "envelope") else r
    close(got, want["result"], f"{entry['python_name']}()")
