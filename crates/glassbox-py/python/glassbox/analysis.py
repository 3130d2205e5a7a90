"""The reference tool's API (Glassbox 2.x's ``GlassboxV2`` and ``HeadCompositionAnalyzer``),
with the same method names, arguments and result keys, computed by glassbox's Rust methods.

Where the reference tool approximates, the exact figure is reported beside the approximate
one: ``faithfulness["sufficiency"]`` is measured by ablation runs (``suff_is_approx`` is then
False) and ``faithfulness["taylor_sufficiency"]`` is the first-order estimate the reference
reports. Heads are ``(layer, head)`` tuples. This module only shapes results: every figure is
computed in Rust.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import copy

from . import _native
from ._native import InputError, Model
from .pictures import Result

Tokens = Any  # a prompt string, a list of ids, or an integer array from ``model.to_tokens``
Answer = Union[str, int]
Head = Tuple[int, int]

__all__ = ["GlassboxV2", "HeadCompositionAnalyzer"]


def _head(h: Sequence[int]) -> Head:
    return (int(h[0]), int(h[1]))


def _parse_head_name(name: str) -> Head:
    # "L09H06" -> (9, 6)
    layer, head = name[1:].split("H")
    return (int(layer), int(head))


def _heads(hs: Iterable[Sequence[int]]) -> List[Head]:
    return [_head(h) for h in hs]


def _metric(metric: Any) -> Optional[Dict[str, Any]]:
    """A metric for the option structs: None, a name (``logit_diff``, ``logprob``, ``prob``,
    ``kl``) or the library's dict form (``{"kind": "kl", "position": "mean"}``)."""
    if metric is None:
        return None
    if isinstance(metric, str):
        names = {"ld": "logit_diff", "logit_diff": "logit_diff", "logprob": "logprob", "prob": "prob", "kl": "kl"}
        if metric not in names:
            raise InputError(f"unknown metric {metric!r}; use logit_diff, logprob, prob or kl")
        return {"kind": names[metric]}
    return dict(metric)


def _method(method: str, n_steps: int) -> Dict[str, Any]:
    m = {"taylor": "taylor", "integrated_gradients": "integrated_gradients", "ig": "integrated_gradients",
         "eap": "taylor", "eap-ig": "integrated_gradients", "eap_ig": "integrated_gradients"}.get(method)
    if m is None:
        raise InputError(f"unknown method {method!r}; use taylor or integrated_gradients")
    return {"kind": m, "n_steps": int(n_steps)} if m == "integrated_gradients" else {"kind": m}


def _options(**kw: Any) -> Dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _head_scores(scores: List[List[float]]) -> Dict[Head, float]:
    """``scores[layer][head]`` as ``{(layer, head): score}``."""
    return {(layer, head): float(s) for layer, row in enumerate(scores) for head, s in enumerate(row)}


class GlassboxV2:
    """Circuit analysis on a glassbox ``Model`` with Glassbox 2.x's API.

    Token arguments are what ``model.to_tokens`` returns (or a string, or a list of ids);
    answers are one-token strings (``" Mary"``) or token ids (``model.to_single_token``).
    """

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise InputError("GlassboxV2 takes a glassbox.Model (glassbox.Model.load(...))")
        self.model = model

    # ---- inputs -------------------------------------------------------------------------

    def _text(self, x: Answer) -> str:
        return x if isinstance(x, str) else self.model.to_string([int(x)])

    def _contrast(self, clean: Tokens, corrupted: Optional[Tokens], correct: Answer, incorrect: Answer) -> Dict[str, Any]:
        if isinstance(clean, str) and (corrupted is None or isinstance(corrupted, str)):
            return _native.contrast(self.model, clean, self._text(correct), self._text(incorrect), corrupted)
        if corrupted is None:
            raise InputError("give the corrupted tokens too (or the clean prompt as a string, whose answers' words are then swapped)")
        correct_id = correct if isinstance(correct, int) else self.model.to_single_token(correct)
        incorrect_id = incorrect if isinstance(incorrect, int) else self.model.to_single_token(incorrect)
        return _native.contrast_from_tokens(self.model, clean, corrupted, int(correct_id), int(incorrect_id))

    def _prompt(self, tokens: Tokens, correct: Answer, incorrect: Answer) -> Dict[str, Any]:
        return _native.prompt(self.model, tokens, correct, incorrect)

    # ---- one call -----------------------------------------------------------------------

    def analyze(
        self,
        prompt: str,
        correct: str,
        incorrect: str,
        corrupted: Optional[str] = None,
        method: str = "taylor",
        n_steps: int = 20,
        include_logit_lens: bool = False,
        target: Optional[float] = None,
        max_heads: Optional[int] = None,
        ablation: Optional[str] = None,
        include_mlps: Optional[bool] = None,
        metric: Any = None,
    ) -> Dict[str, Any]:
        """Attribution, the minimum faithful circuit and its faithfulness: ``circuit``
        (``(layer, head)`` tuples), ``faithfulness`` (``sufficiency``, ``comprehensiveness``,
        ``f1``, ``category``, ``suff_is_approx``; exact, with ``taylor_sufficiency`` beside),
        ``attributions`` (``{(layer, head): score}``), ``top_heads``, ``clean_ld``,
        ``corrupted_ld``, and ``logit_lens`` when ``include_logit_lens``."""
        c = self._contrast(prompt, corrupted, correct, incorrect)
        opts = _options(method=_method(method, n_steps), logit_lens=include_logit_lens, target=target,
                        max_heads=max_heads, ablation=ablation, include_mlps=include_mlps, metric=_metric(metric))
        r = _native.analyze(self.model, c, opts)
        raw = copy.deepcopy(r)
        # The circuit's heads typed by their attention on this prompt, for the picture.
        types = _native.attention_patterns(self.model, c["clean"], {"heads": r["circuit"]})["head_types"] if r["circuit"] else {}
        r["circuit"] = _heads(r["circuit"])
        r["attributions"] = {_parse_head_name(k): v for k, v in r["attributions"].items()}
        for h in r["top_heads"]:
            h["head"] = (h["layer"], h["head"])
        for s in r["trajectory"]:
            s["head"] = _head(s["head"])
        return Result(r, "analyze", raw, types)

    # ---- attribution --------------------------------------------------------------------

    def attribution_patching(
        self,
        tokens_clean: Tokens,
        tokens_corrupted: Tokens,
        target_token: Answer,
        distractor_token: Answer,
        method: str = "taylor",
        n_steps: int = 20,
        metric: Any = None,
    ) -> Tuple[Dict[Head, float], float]:
        """Per-head attribution of the clean-minus-corrupted metric: ``({(layer, head): score},
        clean_ld)``. ``method``: ``taylor`` (attribution patching, one backward pass) or
        ``integrated_gradients`` (``n_steps`` steps, exact path integral)."""
        r = self._attribute(tokens_clean, tokens_corrupted, target_token, distractor_token, "heads", method, n_steps, metric)
        return _head_scores(r["scores"]), float(r["clean_ld"])

    def mlp_attribution(
        self,
        tokens_clean: Tokens,
        tokens_corrupted: Tokens,
        target_token: Answer,
        distractor_token: Answer,
        method: str = "taylor",
        n_steps: int = 20,
        metric: Any = None,
    ) -> Dict[int, float]:
        """Per-layer MLP attribution: ``{layer: score}``."""
        r = self._attribute(tokens_clean, tokens_corrupted, target_token, distractor_token, "mlp", method, n_steps, metric)
        return {layer: float(row[0]) for layer, row in enumerate(r["scores"])}

    def _attribute(self, clean, corrupted, t, d, component, method, n_steps, metric) -> Dict[str, Any]:
        c = self._contrast(clean, corrupted, t, d)
        opts = _options(component=component, method=_method(method, n_steps), metric=_metric(metric))
        return _native.attribute(self.model, c, opts)

    def attribute(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                  component: str = "heads", method: str = "taylor", n_steps: int = 20, metric: Any = None) -> Dict[str, Any]:
        """glassbox's full attribution result (heads, ``mlp`` or ``attn_out``), with IG's
        completeness residual."""
        return Result(self._attribute(tokens_clean, tokens_corrupted, target_token, distractor_token, component, method, n_steps, metric), "attribution")

    def minimum_faithful_circuit(
        self,
        tokens_clean: Tokens,
        tokens_corrupted: Tokens,
        target_token: Answer,
        distractor_token: Answer,
        target: Optional[float] = None,
        max_heads: Optional[int] = None,
        method: str = "taylor",
        n_steps: int = 20,
        ablation: Optional[str] = None,
        metric: Any = None,
    ) -> Tuple[List[Head], Dict[Head, float], float]:
        """Heads added by decreasing attribution until the exact sufficiency reaches
        ``target``, then pruned: ``(circuit, attributions, clean_ld)``."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        a = _native.attribute(self.model, c, _options(method=_method(method, n_steps), metric=_metric(metric)))
        search = _native.minimum_faithful_circuit(
            self.model, c, a["scores"], _options(target=target, max_heads=max_heads),
            _options(ablation=ablation, metric=_metric(metric)))
        return _heads(search["circuit"]), _head_scores(a["scores"]), float(a["clean_ld"])

    def faithfulness(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                     circuit: Sequence[Head], mlps: Sequence[int] = (), ablation: Optional[str] = None,
                     metric: Any = None) -> Dict[str, Any]:
        """Exact sufficiency, comprehensiveness and F1 of a given circuit (by ablation runs)."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        circ = {"heads": [list(h) for h in circuit], "mlps": list(mlps)}
        return _native.faithfulness(self.model, c, circ, _options(ablation=ablation, metric=_metric(metric)))

    # ---- lens, edges, stability, tokens, attention ---------------------------------------

    def logit_lens(self, tokens: Tokens, target_token: Answer, distractor_token: Answer) -> Dict[str, Any]:
        """``logit_diffs`` (at the embedding and after each layer), ``logit_shifts`` (per
        block), ``head_direct_effects[layer][head]``, ``mlp_direct_effects``, top tokens."""
        return Result(_native.logit_lens(self.model, self._prompt(tokens, target_token, distractor_token), None), "logit-lens")

    def edge_attribution_patching(
        self,
        tokens_clean: Tokens,
        tokens_corrupted: Tokens,
        target_token: Answer,
        distractor_token: Answer,
        top_k: int = 50,
        method: str = "eap",
        n_steps: int = 20,
        metric: Any = None,
    ) -> Dict[str, Any]:
        """Every sender → receiver edge scored (EAP, Syed et al. 2024; ``method="eap-ig"`` for
        integrated gradients): ``top_edges`` (``sender``, ``receiver``, ``score``), ``n_edges``."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        return Result(_native.edge_attribution(self.model, c, _options(method=_method(method, n_steps), top_k=top_k, metric=_metric(metric))), "edges")

    def attribution_stability(self, tokens: Tokens, target_token: Answer, distractor_token: Answer,
                              n_corruptions: int = 25, seed: int = 42, p: Optional[float] = None) -> Dict[str, Any]:
        """Per-head stability across random corruptions and the Kendall τ-b
        ``rank_consistency``; ``top_stable_heads`` carry ``head`` as a tuple."""
        r = _native.attribution_stability(self.model, self._prompt(tokens, target_token, distractor_token),
                                          _options(n_corruptions=n_corruptions, seed=seed, p=p))
        raw = copy.deepcopy(r)
        for h in r["top_stable_heads"]:
            h["head"] = _head(h["head"])
        return Result(r, "stability", raw)

    def token_attribution(self, tokens: Tokens, target_token: Answer, distractor_token: Answer,
                          method: str = "gradient_x_input", n_steps: int = 20, baseline: Any = None) -> Dict[str, Any]:
        """Input-token saliency: ``tokens`` and ``top_tokens`` (``token_str``, ``attribution``,
        ``position``)."""
        if method == "gradient_x_input":
            m: Dict[str, Any] = {"kind": "gradient_x_input"}
        elif method in ("integrated_gradients", "ig"):
            b = baseline if baseline is not None else "zero"
            m = {"kind": "integrated_gradients", "n_steps": int(n_steps), "baseline": {"token": b} if isinstance(b, int) else b}
        else:
            raise InputError(f"unknown method {method!r}; use gradient_x_input or integrated_gradients")
        return Result(_native.token_attribution(self.model, self._prompt(tokens, target_token, distractor_token), {"method": m}), "token-attribution")

    def attention_patterns(self, tokens: Tokens, heads: Optional[Sequence[Head]] = None, top_k: int = 10,
                           seed: Optional[int] = None) -> Dict[str, Any]:
        """Patterns, ``entropy`` and ``head_types`` (keys ``L09H09``) of the given heads, or of
        the ``top_k`` most distinctive heads when ``heads`` is None."""
        opts = _options(heads=[list(h) for h in heads] if heads is not None else None, top_k=top_k, seed=seed)
        r = _native.attention_patterns(self.model, tokens, opts)
        raw = copy.deepcopy(r)
        for h in r["heads"]:
            h["head"] = _head(h["head"])
        return Result(r, "attention", raw)

    # ---- sets ------------------------------------------------------------------------------

    def bootstrap_metrics(self, prompts: Sequence[Tuple[str, str, str]], n_boot: int = 500, seed: int = 0,
                          method: str = "taylor", n_steps: int = 20, target: Optional[float] = None) -> Dict[str, Any]:
        """Faithfulness of one circuit found over the prompts ``(prompt, correct, incorrect)``
        (corrupted by swapping the answers' words), with percentile-bootstrap 95 % intervals:
        ``sufficiency``, ``comprehensiveness`` and ``f1``, each ``{mean, std, ci_lo, ci_hi, n}``,
        plus the ``circuit`` and the per-prompt figures."""
        contrasts = [_native.contrast(self.model, p, c, i, None) for (p, c, i) in prompts]
        r = _native.analyze_set(self.model, contrasts, {"analyze": _options(method=_method(method, n_steps), target=target),
                                                        "n_boot": n_boot, "seed": seed})
        out = dict(r["bootstrap"])
        out["circuit"] = _heads(r["circuit"])
        out["faithfulness"] = r["faithfulness"]
        out["prompts"] = r["prompts"]
        return out

    def analyze_set(self, prompts: Sequence[Tuple[str, str, str]], n_boot: int = 1000, seed: int = 0,
                    method: str = "taylor", n_steps: int = 20) -> Dict[str, Any]:
        """glassbox's ``analyze`` over a prompt set: one circuit, mean figures, bootstrap CIs."""
        contrasts = [_native.contrast(self.model, p, c, i, None) for (p, c, i) in prompts]
        r = _native.analyze_set(self.model, contrasts, {"analyze": {"method": _method(method, n_steps)}, "n_boot": n_boot, "seed": seed})
        r["circuit"] = _heads(r["circuit"])
        return r

    # ---- glassbox's methods beyond the reference tool ------------------------------------

    def exact_patching(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                       direction: str = "into_clean", metric: Any = None) -> Dict[str, Any]:
        """Exact activation patching of every head and MLP (batched): ``heads[layer][head]``,
        ``mlps[layer]`` (normalised) and their raw effects."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        return Result(_native.exact_patching(self.model, c, _options(direction=direction, metric=_metric(metric))), "patch")

    def path_patching(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                      receiver: Any = "logits", senders: Optional[Sequence[Head]] = None, metric: Any = None) -> Dict[str, Any]:
        """Path patching from every earlier head (or ``senders``) to ``receiver``: ``"logits"``,
        or ``{"q": [layer, head]}`` / ``{"k": [layer, kv_head]}`` / ``{"v": [layer, kv_head]}``."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        opts = _options(receiver=receiver, senders=[list(h) for h in senders] if senders is not None else None, metric=_metric(metric))
        return Result(_native.path_patching(self.model, c, opts), "path-patch")

    def causal_scrubbing(self, hypothesis: Dict[Head, str], n: int = 32, seed: int = 0) -> Dict[str, Any]:
        """Causal scrubbing of ``{(layer, head): feature}`` (features ``io``, ``subject``,
        ``template``, ``order``) on ``n`` generated IOI prompts."""
        _, _, scrub = _native.ioi_prompts(self.model, n, seed, "name_swap")
        opts = {"hypothesis": [[list(h), f] for h, f in hypothesis.items()], "seed": seed}
        return _native.causal_scrubbing(self.model, scrub, opts)


class HeadCompositionAnalyzer:
    """Q/K/V composition scores between heads (Elhage et al. 2021), from the weights alone."""

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise InputError("HeadCompositionAnalyzer takes a glassbox.Model")
        self.model = model

    def q_composition_score(self, sender_layer: int, sender_head: int, receiver_layer: int, receiver_head: int) -> float:
        """How much the receiver's queries read what the sender writes."""
        return _native.composition_score(self.model, (sender_layer, sender_head), (receiver_layer, receiver_head), "q")

    def k_composition_score(self, sender_layer: int, sender_head: int, receiver_layer: int, receiver_head: int) -> float:
        """How much the receiver's keys read what the sender writes."""
        return _native.composition_score(self.model, (sender_layer, sender_head), (receiver_layer, receiver_head), "k")

    def v_composition_score(self, sender_layer: int, sender_head: int, receiver_layer: int, receiver_head: int) -> float:
        """How much the receiver's values read what the sender writes."""
        return _native.composition_score(self.model, (sender_layer, sender_head), (receiver_layer, receiver_head), "v")

    def all_composition_scores(self, circuit: Sequence[Head], min_score: float = 0.0) -> Dict[str, Any]:
        """Scores between every ordered pair of the circuit's heads (earlier → later):
        ``combined_edges`` with ``sender``, ``receiver``, ``q``, ``k``, ``v``."""
        return Result(_native.all_composition_scores(self.model, [list(h) for h in circuit], {"min_score": min_score}), "composition")
