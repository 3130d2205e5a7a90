"""`glassbox batch` output over 256 IOI prompts read by pyarrow: one row per prompt, per-head figures as nested
[layer][head] lists, equal to running each prompt alone through the Python package."""

import json
import subprocess

import numpy as np
import pytest

import glassbox
from glassbox import _native

from conftest import FIXTURES, glassbox_bin

import pyarrow.parquet as pq  # installed by scripts/test


def test_batch_parquet_reads_in_pyarrow_and_equals_single_runs(tmp_path, tiny_llama):
    model_dir = str(FIXTURES / "tiny-llama")
    out = tmp_path / "r.parquet"
    subprocess.run(
        [str(glassbox_bin()), "batch", "--model", model_dir, "--task", "ioi", "--n", "256", "--seed", "5",
         "--method", "attribution", "--batch-size", "16", "--row-group", "16", "--out", str(out)],
        check=True, capture_output=True,
    )
    table = pq.read_table(out)
    assert table.num_rows == 256
    assert str(table.schema.field("scores").type) == "list<element: list<element: double not null> not null>"
    assert table.schema.field("id").type == "string"
    meta = table.schema.metadata
    settings = json.loads(meta[b"glassbox.settings"])
    assert settings["method"] == "attribution" and len(settings["model_sha256"]) == 64
    assert pq.ParquetFile(out).num_row_groups == 16
    prompts = {}
    for line in open(f"{out}.prompts.jsonl"):
        p = json.loads(line)
        prompts[p["id"]] = p
    for row in table.to_pylist():
        p = prompts[row["id"]]
        c = _native.contrast(tiny_llama, p["prompt"], p["correct"], p["incorrect"], p["corrupted"])
        alone = glassbox.attribute(tiny_llama, c)
        np.testing.assert_allclose(np.array(row["scores"]), np.array(alone["scores"]), rtol=1e-5, atol=1e-5)
        assert row["clean_ld"] == pytest.approx(alone["clean_ld"], rel=1e-5, abs=1e-5)
        assert row["group"] == p["group"]


def test_sae_attribute_run_records_its_sae(tmp_path, tiny_llama):
    """A dataset run of `sae-attribute` from Python writes one row per prompt and names the SAE
    in the file's settings (so that `resume` refuses another SAE)."""
    sae_dir = str(FIXTURES / "sae" / "standard")
    sae = glassbox.SAE.load(sae_dir)
    items = [{"line": i + 1, "id": f"p{i}", "prompt": "When Mary and John went to the store, John gave a drink to",
              "correct": " Mary", "incorrect": " John"} for i in range(3)]
    out = tmp_path / "s.parquet"
    r = _native.batch_run(tiny_llama, items, "sae-attribute", str(out), sae=sae)
    assert r["settings"]["sae"] == sae_dir
    table = pq.read_table(out)
    assert table.num_rows == 3
    assert json.loads(table.schema.metadata[b"glassbox.settings"])["sae"] == sae_dir
    other = glassbox.SAE.load(str(FIXTURES / "sae" / "topk"))
    with pytest.raises(Exception, match="(?i)sae|settings|differ"):
        _native.batch_run(tiny_llama, items, "sae-attribute", str(out), resume=True, sae=other)


def test_resume_with_other_weights_is_refused(tmp_path, tiny_llama):
    """The run records the sha256 of the weights the model was read from; resuming it with a
    model loaded from another file is refused (no path given beside the model to trust)."""
    items = [{"line": i + 1, "id": f"p{i}", "prompt": "When Mary and John went to the store, John gave a drink to",
              "correct": " Mary", "incorrect": " John"} for i in range(2)]
    out = tmp_path / "r.parquet"
    r = _native.batch_run(tiny_llama, items, "logit-lens", str(out))
    assert len(r["settings"]["model_sha256"]) == 64
    # The same architecture and tokenizer, other weights: the tied-embedding twin of tiny-llama.
    other = glassbox.Model.load(str(FIXTURES / "tiny-llama-tied"))
    more = items + [{**items[0], "id": "p9", "line": 9}]
    with pytest.raises(glassbox.InputError, match="same method, options and model"):
        _native.batch_run(other, more, "logit-lens", str(out), resume=True)
