"""TransformerLens-style helpers."""

from ._native import get_act_name

__all__ = ["get_act_name"]
