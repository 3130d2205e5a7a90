"""Dataset runs sharded over a Ray cluster.

    import glassbox.distributed
    report = glassbox.distributed.run("ioi.jsonl", "attribution", "smollm2-135m", "ioi-attr.parquet",
                                      num_workers=8)

The prompts (a JSONL file as `glassbox batch --input` takes, or a list of dicts) are cut into
shards of `shard_size` consecutive prompts. Each Ray worker (an actor) loads the model once and
takes shards one at a time; a shard runs exactly as `glassbox batch` runs a file (the same
library code, groups of `batch_size` sorted by length) and writes its own Parquet part,
`OUT.shards/shard-NNNNN.parquet`, under a temporary name renamed when whole. When a worker
dies, Ray restarts it (the model loaded again) and its shard runs again, up to `max_retries`
times. `OUT.shards/manifest.json` lists every part with its rows, the worker (host and pid)
and the attempt that wrote it; the parts are then joined, row group by row group, into `OUT`.
Shards whose part is already there are not run again, so a failed or stopped run continues
where it was by calling `run` again with the same arguments.

On a real cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the
others (each with this package and the model reachable: a registry name is fetched on each
machine the first time), then `run(..., address="auto")` from a machine of the cluster. Shards
are independent, so throughput grows with the workers until the driver's joining or the
storage is the limit; the result must be on storage every worker reaches (a shared
filesystem), or run the driver where the parts are written.
"""

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _native

__all__ = ["run"]


def _items(dataset: Union[str, os.PathLike, Sequence[Dict[str, Any]]]):
    if isinstance(dataset, (str, os.PathLike)):
        with open(dataset, encoding="utf-8") as f:
            lines = f.read().split("\n")
    else:
        lines = [json.dumps(d) for d in dataset]
    return _native.batch_parse(lines)


class _Worker:
    """A Ray actor: one model, shards run one at a time."""

    def __init__(self, model: str, prepend_bos: Optional[bool], sae: Optional[str], shards_dir: str):
        self.model_spec = model
        self.model = _native.Model.load(model, prepend_bos)
        self.sae = _native.SAE.load(sae) if sae else None
        self.shards_dir = Path(shards_dir)

    def run_shard(self, index: int, items: List[Dict[str, Any]], method: str, options, batch_size: int,
                  kill_once: bool = False) -> Dict[str, Any]:
        attempts = self.shards_dir / f"shard-{index:05d}.attempts"
        with open(attempts, "a") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        if kill_once and len(attempts.read_text().splitlines()) == 1:
            # Fault injection for the tests: this process dies (SIGKILL) in the middle of its shard.
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        out = self.shards_dir / f"shard-{index:05d}.parquet"
        tmp = self.shards_dir / f"shard-{index:05d}.parquet.tmp"
        for stale in (tmp, Path(f"{tmp}.parts")):
            if stale.is_dir():
                import shutil
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        r = _native.batch_run(self.model, items, method, str(tmp), options=options,
                              batch_size=batch_size, row_group=max(1, len(items)), sae=self.sae)
        os.replace(tmp, out)
        return {
            "shard": index,
            "part": out.name,
            "rows": r["report"]["rows"],
            "failed": r["report"]["failed"],
            "lines_left_out": r["lines_left_out"],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "attempt": len(attempts.read_text().splitlines()),
            "settings": r["settings"],
        }


def run(dataset, method: str, model: str, out: Union[str, os.PathLike], *, options: Optional[Dict[str, Any]] = None,
        shard_size: int = 16, batch_size: int = 16, num_workers: int = 2, cpus_per_worker: float = 1,
        address: Optional[str] = None, max_retries: int = 3, prepend_bos: Optional[bool] = None,
        sae: Optional[str] = None, _kill_worker_on_shard: Optional[int] = None) -> Dict[str, Any]:
    """Runs `method` over the prompts on a Ray cluster into the Parquet file `out` (see the module).

    `address`: a running cluster (`"auto"`, or `HOST:PORT`); without it, a local one is started
    (`ray.init`). Returns the manifest: the parts, rows, lines left out, failed prompts, and
    the seconds taken.
    """
    import ray

    if shard_size < 1 or num_workers < 1 or max_retries < 0:
        raise _native.InputError("shard_size and num_workers must be at least 1 and max_retries at least 0")
    items, errors = _items(dataset)
    if not items:
        raise _native.InputError(f"no prompts to run ({len(errors)} lines left out)")
    out = Path(out)
    shards_dir = Path(f"{out}.shards")
    shards_dir.mkdir(parents=True, exist_ok=True)
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    Worker = ray.remote(num_cpus=cpus_per_worker, max_restarts=max_retries, max_task_retries=max_retries)(_Worker)
    workers = [Worker.remote(model, prepend_bos, sae, str(shards_dir)) for _ in range(num_workers)]
    t0 = time.time()
    done: Dict[int, Dict[str, Any]] = {}
    previous = shards_dir / "manifest.json"
    if previous.exists():
        for p in json.loads(previous.read_text()).get("parts", []):
            if (shards_dir / p["part"]).exists():
                done[p["shard"]] = p
    todo = [i for i in range(len(shards)) if i not in done]
    pending = {}
    free = list(workers)
    while todo or pending:
        while todo and free:
            i = todo.pop(0)
            w = free.pop(0)
            ref = w.run_shard.remote(i, shards[i], method, options, batch_size, kill_once=(i == _kill_worker_on_shard))
            pending[ref] = (i, w)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i, w = pending.pop(ref)
            done[i] = ray.get(ref)
            free.append(w)
            _write_manifest(shards_dir, done, errors, method, t0)
    manifest = _write_manifest(shards_dir, done, errors, method, t0)
    parts = [str(shards_dir / done[i]["part"]) for i in sorted(done)]
    settings = done[min(done)].get("settings")
    tmp = Path(f"{out}.tmp")
    _native.batch_join(parts, str(tmp), settings)
    os.replace(tmp, out)
    for w in workers:
        ray.kill(w)
    manifest["out"] = str(out)
    return manifest


def _write_manifest(shards_dir: Path, done: Dict[int, Dict[str, Any]], errors, method: str, t0: float) -> Dict[str, Any]:
    parts = [done[i] for i in sorted(done)]
    manifest = {
        "method": method,
        "parts": parts,
        "rows": sum(p["rows"] for p in parts),
        "lines_left_out": list(errors) + [e for p in parts for e in p["lines_left_out"]],
        "failed": [e for p in parts for e in p["failed"]],
        "seconds": time.time() - t0,
    }
    tmp = shards_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, shards_dir / "manifest.json")
    return manifest
