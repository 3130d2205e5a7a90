"""glassbox: mechanistic interpretability for transformer language models, computed in Rust.

    import glassbox
    model = glassbox.Model.load("smollm2-135m")          # fetched and verified on first use
    logits, cache = model.run_with_cache("When Mary and John went to the store, John gave a drink to")
    cache["pattern", 9]                                   # numpy arrays, TransformerLens names
    gb = glassbox.GlassboxV2(model)                       # the reference tool's API
    r = gb.analyze("When Mary and John went to the store, John gave a drink to", " Mary", " John")
    r["circuit"]                                          # a dict; in Jupyter it shows as its picture
    open("analysis.svg", "w").write(r.plot())             # the same picture as `glassbox analyze --plot`

The work (forward passes, gradients, every method) runs in Rust with the GIL released.
"""

import os as _os

# The thread settings glassbox's own programs use (glassbox::threads::candle_env): candle's
# elementwise pool off, rayon with one thread per core. Set before the native module loads;
# values the user set are kept.
_os.environ.setdefault("CANDLE_NUM_THREADS", "1")
_os.environ.setdefault("RAYON_NUM_THREADS", str(_os.cpu_count() or 1))

from . import _native  # noqa: E402
from ._native import (  # noqa: E402
    ActivationCache,
    Config,
    GlassboxError,
    HookPoint,
    InputError,
    Intervention,
    Model,
    ModelLoadError,
    NonFiniteError,
    SAE,
    TranscoderSet,
    __version__,
)
from ._native import contrast, contrast_from_tokens, prompt, task_prompts  # noqa: E402
from .analysis import GlassboxV2, HeadCompositionAnalyzer, HeadKey, SAEFeatureAttributor  # noqa: E402
from .pictures import Result, plot  # noqa: E402
from .transformer_lens import HookedTransformer  # noqa: E402
from . import methods as _methods  # noqa: E402
from .methods import method_help, methods, run  # noqa: E402

# Every catalog method as a function (attribute, analyze, exact_patching, ...).
globals().update(_methods.GENERATED)
from . import utils  # noqa: E402

__all__ = [
    "ActivationCache",
    "Config",
    "GlassboxError",
    "GlassboxV2",
    "HeadCompositionAnalyzer",
    "HeadKey",
    "HookPoint",
    "HookedTransformer",
    "InputError",
    "Intervention",
    "Model",
    "ModelLoadError",
    "NonFiniteError",
    "Result",
    "SAE",
    "TranscoderSet",
    "SAEFeatureAttributor",
    "plot",
    "contrast",
    "contrast_from_tokens",
    "method_help",
    "methods",
    "prompt",
    "run",
    "task_prompts",
    "utils",
    "__version__",
] + sorted(_methods.GENERATED)
