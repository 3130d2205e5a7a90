"""Shared fixtures of the Python package's tests: the models, the repository's fixtures, the
`glassbox` binary (for comparing with the Rust side) and a numpy-only safetensors reader."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import glassbox

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When John and Mary went to the store, Mary gave a drink to"


def glassbox_bin() -> Path:
    """The CLI built from the same checkout (`GLASSBOX_BIN`, default target/release/glassbox)."""
    return Path(os.environ.get("GLASSBOX_BIN", REPO / "target" / "release" / "glassbox"))


def read_safetensors(path: Path) -> dict:
    """Every tensor of a safetensors file as a numpy array (F32, F64, I64, I32, BOOL)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(body[lo:hi], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


@pytest.fixture(scope="session")
def smollm2():
    return glassbox.Model.load("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llama():
    return glassbox.Model.load(str(FIXTURES / "tiny-llama"))


@pytest.fixture(scope="session")
def gb(smollm2):
    return glassbox.GlassboxV2(smollm2)
