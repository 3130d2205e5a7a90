"""TransformerLens' ``model.blocks[l]``: one layer's weights and hook points by TransformerLens'
attribute names (``model.blocks[3].attn.W_Q`` ``[n_heads, d_model, d_head]``,
``model.blocks[3].mlp.W_in``, ``model.blocks[3].hook_resid_pre.name``,
``model.blocks[3].attn.hook_z``). Each weight is the layer's slice of the model's stacked
property (``model.W_Q[3]``), read when asked: a copy, as those are."""

from __future__ import annotations

from typing import Any, Iterator, List, Union

from ._native import HookPoint, InputError

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_MLP = ("W_in", "W_out", "W_gate", "b_in", "b_out")


def _hook(name: str) -> HookPoint:
    try:
        return HookPoint(name)
    except InputError as e:
        raise AttributeError(str(e)) from None


class _Part:
    """A sublayer of one block (``attn``, ``mlp``, ``ln1``, ``ln2``): its weights (the
    layer's slice of the model's property of that name) and its hook points."""

    def __init__(self, model: Any, layer: int, prefix: str, weights: tuple) -> None:
        self._model, self._layer, self._prefix, self._weights = model, layer, prefix, weights

    def __getattr__(self, name: str) -> Any:
        if name in self._weights:
            w = getattr(self._model, name)
            return None if w is None else w[self._layer]
        if name.startswith("hook_"):
            return _hook(f"{self._prefix}{name}")
        raise AttributeError(f"{self._prefix.rstrip('.')} has no {name!r} (weights: {', '.join(self._weights) or 'none'}; hook points hook_*)")

    def __dir__(self) -> List[str]:
        return list(self._weights)

    def __repr__(self) -> str:
        return f"<{self._prefix.rstrip('.')}>"


class Block:
    """One transformer block: ``attn``, ``mlp``, ``ln1``, ``ln2`` and the block's own hook
    points (``hook_resid_pre``, ``hook_attn_out``, ...)."""

    def __init__(self, model: Any, layer: int) -> None:
        self.layer = layer
        self.attn = _Part(model, layer, f"blocks.{layer}.attn.", _ATTN)
        self.mlp = _Part(model, layer, f"blocks.{layer}.mlp.", _MLP)
        self.ln1 = _Part(model, layer, f"blocks.{layer}.ln1.", ())
        self.ln2 = _Part(model, layer, f"blocks.{layer}.ln2.", ())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("hook_"):
            return _hook(f"blocks.{self.layer}.{name}")
        raise AttributeError(f"blocks[{self.layer}] has no {name!r} (attn, mlp, ln1, ln2 and hook points hook_*)")

    def __repr__(self) -> str:
        return f"<blocks[{self.layer}]>"


class Blocks:
    """``model.blocks``: a sequence of ``Block``s (negative indices and slices as a list's)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._n = int(model.cfg.n_layers)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Union[int, slice]) -> Any:
        if isinstance(i, slice):
            return [Block(self._model, j) for j in range(self._n)[i]]
        j = int(i) + self._n if int(i) < 0 else int(i)
        if not 0 <= j < self._n:
            raise IndexError(f"block {i} is out of range for a model of {self._n} layers")
        return Block(self._model, j)

    def __iter__(self) -> Iterator[Block]:
        return (Block(self._model, j) for j in range(self._n))

    def __repr__(self) -> str:
        return f"<{self._n} blocks>"
