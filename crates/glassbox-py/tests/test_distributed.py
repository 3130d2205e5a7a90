"""glassbox.distributed on a local Ray cluster with 2 workers: 64 prompts give the rows of the
single-process `glassbox batch` run, and a worker killed (SIGKILL) in the middle of its shard
has the shard run again by a new worker process."""

import json
import subprocess

import numpy as np
import pyarrow.parquet as pq  # installed by scripts/test
import pytest
import ray  # installed by scripts/test

import glassbox.distributed

from conftest import FIXTURES, glassbox_bin


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_distributed_run_equals_the_single_process_run(tmp_path, local_cluster):
    model = str(FIXTURES / "tiny-llama")
    prompts = tmp_path / "p.jsonl"
    subprocess.run([str(glassbox_bin()), "batch", "prompts", "--model", model, "--task", "ioi", "--n", "64",
                    "--seed", "2", "--out", str(prompts)], check=True, capture_output=True)
    single = tmp_path / "single.parquet"
    subprocess.run([str(glassbox_bin()), "batch", "--model", model, "--input", str(prompts), "--method", "attribution",
                    "--out", str(single)], check=True, capture_output=True)
    out = tmp_path / "dist.parquet"
    manifest = glassbox.distributed.run(str(prompts), "attribution", model, out, shard_size=8, num_workers=2,
                                        _kill_worker_on_shard=3)
    assert manifest["rows"] == 64 and len(manifest["parts"]) == 8
    want = {r["id"]: r for r in pq.read_table(single).to_pylist()}
    got = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in got) == sorted(want)
    for r in got:
        w = want[r["id"]]
        np.testing.assert_allclose(np.array(r["scores"]), np.array(w["scores"]), rtol=1e-5, atol=1e-5)
        assert r["clean_ld"] == pytest.approx(w["clean_ld"], rel=1e-5, abs=1e-5)
        assert r["line"] == w["line"] and r["group"] == w["group"]
    # The killed shard ran twice, the second time in another process.
    shard3 = next(p for p in manifest["parts"] if p["shard"] == 3)
    assert shard3["attempt"] == 2
    pids = [line.split()[1] for line in (tmp_path / "dist.parquet.shards" / "shard-00003.attempts").read_text().splitlines()]
    assert len(pids) == 2 and pids[0] != pids[1]
    assert json.loads((tmp_path / "dist.parquet.shards" / "manifest.json").read_text())["rows"] == 64
    # The workers: two processes took the shards.
    assert len({p["pid"] for p in manifest["parts"]}) >= 2
