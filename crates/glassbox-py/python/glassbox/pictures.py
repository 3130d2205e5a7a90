"""Results that draw themselves: in Jupyter a method's result shows as its picture
(``_repr_svg_``), and ``result.plot()`` returns the SVG document. The pictures are the CLI's
``--plot`` ones, drawn in Rust: layer × head heatmaps on a diverging scale centred on zero, the
logit-lens curve, attention patterns over the tokens, the circuit and the top edges as graphs,
token saliency as coloured text.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import _native

__all__ = ["Result", "plot"]


def plot(kind: str, result: Dict[str, Any], head_types: Optional[Dict[str, str]] = None) -> str:
    """The SVG picture of ``result``, which the method ``kind`` returned (``analyze``,
    ``attribution``, ``patch``, ``path-patch``, ``logit-lens``, ``attention``, ``edges``,
    ``token-attribution``, ``stability``, ``composition``)."""
    if isinstance(result, Result):
        return result.plot(head_types)
    return _native.plot(kind, result, head_types)


class Result(dict):
    """A method's result: a ``dict`` with the method's keys, plus its picture.

    ``raw`` keeps the result as the Rust method returned it (the ``dict`` itself may carry
    friendlier Python forms, e.g. ``(layer, head)`` tuples), so the picture never depends on
    edits made to the ``dict``.
    """

    def __init__(self, data: Dict[str, Any], kind: str, raw: Optional[Dict[str, Any]] = None,
                 head_types: Optional[Dict[str, str]] = None) -> None:
        super().__init__(data)
        self.kind = kind
        self.raw = raw if raw is not None else dict(data)
        self.head_types = head_types

    def plot(self, head_types: Optional[Dict[str, str]] = None) -> str:
        """The picture as an SVG document (a string)."""
        return _native.plot(self.kind, self.raw, head_types if head_types is not None else self.head_types)

    def save(self, path: str) -> None:
        """Writes the picture to ``path`` as SVG."""
        if not str(path).lower().endswith(".svg"):
            raise _native.InputError(f"{path}: the picture is SVG; give a path ending in .svg "
                                     "(the CLI's --plot also writes PNG)")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.plot())

    def _repr_svg_(self) -> str:
        return self.plot()

    def __reduce__(self):
        return (Result, (dict(self), self.kind, self.raw, self.head_types))
