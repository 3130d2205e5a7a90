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


def plot(kind: str, result: Dict[str, Any]) -> str:
    """The SVG picture of ``result`` (a plain dict is fine; an envelope too), which the method
    ``kind`` returned: any catalog method that draws (``glassbox.methods()`` lists them)."""
    if isinstance(result, Result) and result.kind == kind:
        return result.plot()
    plain = _plain(result)
    if kind == "analyze" and isinstance(plain, dict):
        # GlassboxV2.analyze's top heads carry the reference's (layer, head) pair and the
        # model's shape; the picture reads the library's form.
        plain["top_heads"] = [
            {k: (v[1] if k == "head" and isinstance(v, list) else v) for k, v in h.items() if k not in ("n_layers", "n_heads")}
            if isinstance(h, dict) else h
            for h in plain.get("top_heads", [])
        ]
    return _native.plot(kind, plain)


def _plain(x: Any) -> Any:
    """Tuples (the reference API's heads) as lists, tuple keys as ``L09H06`` names: JSON's forms."""
    if isinstance(x, dict):
        return {(f"L{k[0]:02}H{k[1]:02}" if isinstance(k, tuple) else str(k) if isinstance(k, str) else k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class Result(dict):
    """A method's result: a ``dict`` with the method's keys, plus its picture.

    ``raw`` keeps the result as the Rust method returned it (the ``dict`` itself may carry
    friendlier Python forms, e.g. ``(layer, head)`` tuples), so the picture never depends on
    edits made to the ``dict``.
    """

    def __init__(self, data: Dict[str, Any], kind: str, raw: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(data)
        self.kind = kind
        self.raw = raw if raw is not None else dict(data)
        self.envelope: Optional[Dict[str, Any]] = None

    def plot(self) -> str:
        """The picture as an SVG document (a string)."""
        return _native.plot(self.kind, self.raw)

    def save(self, path: str, scale: float = 2.0) -> None:
        """Writes the picture to ``path``: SVG, or PNG rendered at ``scale`` times its size, by
        the path's ending."""
        p = str(path).lower()
        if p.endswith(".svg"):
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.plot())
        elif p.endswith(".png"):
            data = _native.plot_png(self.kind, self.raw, scale)
            with open(path, "wb") as f:
                f.write(data)
        else:
            raise _native.InputError(f"{path}: give a path ending in .svg or .png")

    def _repr_svg_(self) -> str:
        return self.plot()

    def __reduce__(self):
        return (Result, (dict(self), self.kind, self.raw))
