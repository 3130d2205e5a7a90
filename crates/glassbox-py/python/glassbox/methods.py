"""Every method of glassbox's catalog as a Python function, made from the catalog itself (the
same list the CLI's subcommands, the dashboard's forms and dataset runs come from): adding a
method to the library adds its function here.

    import glassbox
    model = glassbox.Model.load("smollm2-135m")
    c = glassbox.contrast(model, "When Mary and John went to the store, John gave a drink to", " Mary", " John")
    r = glassbox.attribute(model, c, {"method": "integrated_gradients", "n_steps": 20})
    env = glassbox.run("attribution", model, c)          # the envelope: model, input, options, result, ...

Each function takes the model, the method's input (a contrast or prompt dict, a list of them,
a prompt string, token ids, or a dict of input keys such as ``{"task": "ioi", "n": 32}``) and
an options dict with the names of the CLI's flags (unknown keys are an error listing the
accepted ones); it returns the result as a ``glassbox.Result`` (a dict that draws itself).
``progress`` is a function ``(done, total, stage)``, or ``True`` for a tqdm bar when tqdm is
installed. Ctrl-C stops a method within a step and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from . import _native
from .pictures import Result

__all__ = ["run", "methods", "method_help"]


def methods() -> List[Dict[str, Any]]:
    """The catalog: each method's ``name``, ``python_name``, ``summary``, ``input`` kind and
    ``input_fields``, ``needs`` (an SAE, a second model), ``options`` (``name``, ``kind``,
    ``default``, ``help``) and whether it ``plots``."""
    return _native.catalog_entries()


def _progress(progress: Any) -> Optional[Callable[[int, int, str], None]]:
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            from tqdm.auto import tqdm  # type: ignore
        except ImportError:
            return None
        bars: Dict[str, Any] = {}

        def update(done: int, total: int, stage: str) -> None:
            bar = bars.get(stage)
            if bar is None:
                for b in bars.values():
                    b.close()
                bars.clear()
                bar = bars[stage] = tqdm(total=total, desc=stage)
            bar.total = total
            bar.n = done
            bar.refresh()

        return update
    return progress


def run(method: str, model: Any, input: Any = None, options: Optional[Dict[str, Any]] = None, *,
        sae: Any = None, model_b: Any = None, transcoders: Any = None, progress: Any = None) -> Dict[str, Any]:
    """Runs the catalog method ``method`` (its CLI name or Python name) and returns its
    envelope: ``method``, ``glassbox_version``, ``model`` (name, family, sha256 of the
    weights, BOS rule), ``input`` (prompts, answers, token strings), ``metric``, ``options``
    (every default filled in), ``result``, ``warnings`` and ``seconds``."""
    return _native.run(method, model, input, options, sae=sae, model_b=model_b, transcoders=transcoders, progress=_progress(progress))


def _kind_text(kind: Dict[str, Any]) -> str:
    t = kind.get("type")
    if t == "choice":
        return " | ".join(repr(v["name"]) for v in kind["values"])
    if t == "list":
        return f"list of {_kind_text(kind['items'])}"
    if t == "optional":
        return f"{_kind_text(kind['value'])} or None"
    if t == "text" and kind.get("format"):
        return f"str ({kind['format']})"
    return {"integer": "int", "number": "float", "boolean": "bool", "text": "str"}.get(t, str(t))


def method_help(entry: Dict[str, Any]) -> str:
    """A method's docstring, from its catalog entry: the summary, the input and every option
    with its type, default and help (the same text as the CLI's ``--help``)."""
    lines = [entry["summary"], "", f"Input ({entry['input']}): " + ", ".join(f["name"] for f in entry["input_fields"]) + "."]
    needs = entry["needs"]
    if needs.get("sae"):
        lines.append("Needs an SAE or transcoder: sae=glassbox.SAE.load(path).")
    if needs.get("model_b"):
        lines.append("Compares two models: model_b=glassbox.Model.load(...).")
    if needs.get("transcoders"):
        lines.append("Needs a transcoder set: transcoders=glassbox.TranscoderSet.load(path).")
    if entry["options"]:
        lines += ["", "Options (a dict):"]
        for o in entry["options"]:
            lines.append(f"    {o['name']} ({_kind_text(o['kind'])}, default {o['default']!r}): {o['help']}")
    return "\n".join(lines)


def _make(entry: Dict[str, Any]) -> Callable[..., Any]:
    name = entry["name"]

    def method(model: Any, input: Any = None, options: Optional[Dict[str, Any]] = None, *,
               sae: Any = None, model_b: Any = None, transcoders: Any = None, progress: Any = None) -> Any:
        env = run(name, model, input, options, sae=sae, model_b=model_b, transcoders=transcoders, progress=progress)
        result = env["result"]
        if isinstance(result, dict):
            r = Result(result, name)
            r.envelope = env
            return r
        return result

    method.__name__ = entry["python_name"]
    method.__qualname__ = entry["python_name"]
    method.__doc__ = method_help(entry)
    return method


def _generated() -> Dict[str, Callable[..., Any]]:
    return {e["python_name"]: _make(e) for e in methods()}


GENERATED = _generated()
globals().update(GENERATED)
__all__ += sorted(GENERATED)
