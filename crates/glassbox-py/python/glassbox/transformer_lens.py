"""``from glassbox import HookedTransformer``: TransformerLens' loading calls, for code written
against TransformerLens. The model they return is a ``glassbox.Model`` (numpy arrays in and
out, TransformerLens' hook names, cache helpers and weight names).

glassbox keeps the weights as the checkpoint stores them: it does not fold the norms' weights
into the next matrices, centre the writing weights or centre the unembedding. Its figures are
those of ``HookedTransformer.from_pretrained_no_processing``; ``from_pretrained``'s default
processing (``fold_ln`` and the two centrings) changes no logit difference or probability, but
changes the weights and what ``apply_ln_to_stack`` / ``logit_attrs`` give (there,
``apply_weight=True`` gives the direct effects a folded model's ``logit_attrs`` gives).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from ._native import InputError, Model

__all__ = ["HookedTransformer"]

# from_pretrained arguments that only place or type the model in TransformerLens.
_PLACEMENT = {"device", "n_devices", "move_to_device", "dtype", "torch_dtype", "hf_model", "tokenizer", "cache_dir"}
# Processing glassbox does not do (see the module's docstring).
_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "refactor_factored_attn_matrices", "fold_value_biases")


class HookedTransformer:
    """TransformerLens' class name for loading; ``from_pretrained*`` return a ``glassbox.Model``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise InputError(
            "glassbox builds models from checkpoints only: use HookedTransformer.from_pretrained(name) "
            "or glassbox.Model.load(name_or_path) (a TransformerLens checkpoint folder loads too)"
        )

    @staticmethod
    def from_pretrained(model_name: str, default_prepend_bos: Optional[bool] = None, **kwargs: Any) -> Model:
        """``glassbox.Model.load(model_name)``: a registry name (``smollm2-135m``), a GGUF file or a
        Hugging Face / TransformerLens folder. TransformerLens' default processing is not applied
        (a warning says so when it is asked for, as it is by default)."""
        asked = [k for k in _PROCESSING if kwargs.pop(k, k in ("fold_ln", "center_writing_weights", "center_unembed"))]
        if asked:
            warnings.warn(
                f"glassbox does not apply {', '.join(asked)}: the weights stay as stored, as with "
                "from_pretrained_no_processing (logit differences and probabilities are the same; for direct "
                "effects use logit_attrs(..., apply_weight=True)). Pass fold_ln=False, center_writing_weights=False, "
                "center_unembed=False to silence this.",
                stacklevel=2,
            )
        return HookedTransformer.from_pretrained_no_processing(model_name, default_prepend_bos=default_prepend_bos, **kwargs)

    @staticmethod
    def from_pretrained_no_processing(model_name: str, default_prepend_bos: Optional[bool] = None, **kwargs: Any) -> Model:
        """``glassbox.Model.load(model_name)`` with the weights as stored."""
        for k in _PROCESSING:
            if kwargs.pop(k, False):
                raise InputError(f"{k}=True: glassbox does not apply it; use from_pretrained, which says so and loads without it")
        unknown = sorted(set(kwargs) - _PLACEMENT)
        if unknown:
            raise InputError(f"from_pretrained: glassbox does not take {', '.join(unknown)} (it takes the model name, "
                             f"default_prepend_bos, and ignores {', '.join(sorted(_PLACEMENT))})")
        device = kwargs.get("device")
        if device not in (None, "cpu") and not str(device).startswith("cpu"):
            raise InputError(f"device={device!r}: glassbox runs on the CPU; leave device out or give 'cpu'")
        return Model.load(model_name, prepend_bos=default_prepend_bos)
