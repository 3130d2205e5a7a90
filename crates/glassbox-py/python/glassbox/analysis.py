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
from .methods import run as _run
from .pictures import Result

Tokens = Any  # a prompt string, a list of ids, or an integer array from ``model.to_tokens``
Answer = Union[str, int]
Head = Tuple[int, int]

__all__ = ["GlassboxV2", "HeadCompositionAnalyzer", "SAEFeatureAttributor", "HeadKey"]


class HeadKey(str):
    """A head as a result's dict key: the reference's ``(layer, head)`` tuple wherever a
    tuple is used (``attrs[(9, 6)]``, ``for (layer, head), s in attrs.items()``, ``key[0]``,
    equality, hashing and order, ``repr``), and the string ``"L09H06"`` (glassbox's head name)
    where JSON needs a string key, so that ``json.dumps`` of a result works."""

    def __new__(cls, layer: int, head: int) -> "HeadKey":
        key = super().__new__(cls, f"L{int(layer):02}H{int(head):02}")
        key._pair = (int(layer), int(head))
        return key

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeadKey):
            return self._pair == other._pair
        if isinstance(other, tuple):
            return self._pair == other
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._pair)

    def __lt__(self, other: object) -> bool:
        return self._pair < tuple(other) if isinstance(other, (tuple, HeadKey)) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self._pair <= tuple(other) if isinstance(other, (tuple, HeadKey)) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self._pair > tuple(other) if isinstance(other, (tuple, HeadKey)) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self._pair >= tuple(other) if isinstance(other, (tuple, HeadKey)) else NotImplemented

    def __iter__(self):
        return iter(self._pair)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):  # type: ignore[override]
        return self._pair[i]

    def __repr__(self) -> str:
        return repr(self._pair)

    def __reduce__(self):
        return (HeadKey, self._pair)


def _head(h: Sequence[int]) -> Head:
    return (int(h[0]), int(h[1]))


def _parse_head_name(name: str) -> Head:
    # "L09H06" -> (9, 6)
    layer, head = name[1:].split("H")
    return (int(layer), int(head))


def _heads(hs: Iterable[Sequence[int]]) -> List[Head]:
    return [_head(h) for h in hs]


def _metric(metric: Any) -> Any:
    """A metric for the options: None, a name (``logit_diff``, ``logprob``, ``prob``, ``kl``;
    the library checks it) or the dict form (``{"kind": "kl", "position": "mean"}``)."""
    if metric is None or isinstance(metric, str):
        return metric
    return dict(metric)


def _method(method: str, n_steps: int) -> Dict[str, Any]:
    """The ``method`` and ``n_steps`` options (names checked by the library)."""
    return {"method": method, "n_steps": int(n_steps)}


def _call(method: str, model: Model, input: Any, options: Optional[Dict[str, Any]] = None, **kw: Any) -> Dict[str, Any]:
    """A catalog method's result (the envelope's ``result``)."""
    return _run(method, model, input, options, **kw)["result"]


def _options(**kw: Any) -> Dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _head_scores(scores: List[List[float]]) -> Dict[Head, float]:
    """``scores[layer][head]`` as ``{(layer, head): score}`` (keys are ``HeadKey``s)."""
    return {HeadKey(layer, head): float(s) for layer, row in enumerate(scores) for head, s in enumerate(row)}


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
        ``corrupted_ld``, and ``logit_lens`` when ``include_logit_lens``; the reference's
        ``n_heads``, ``corr_prompt``, ``corruption_metadata``, ``mlp_attributions`` (Taylor, by
        layer) and ``model_metadata`` beside them. Not given: the reference's
        ``counterfactual_validation`` and ``evidence_tier`` (its own heuristics, beyond the
        seed's API)."""
        c = self._contrast(prompt, corrupted, correct, incorrect)
        opts = _options(**_method(method, n_steps), logit_lens=include_logit_lens, target=target,
                        max_heads=max_heads, ablation=ablation, include_mlps=include_mlps, metric=_metric(metric))
        r = _call("analyze", self.model, c, opts)
        raw = copy.deepcopy(r)
        r["circuit"] = _heads(r["circuit"])
        r["attributions"] = {HeadKey(*_parse_head_name(k)): v for k, v in r["attributions"].items()}
        cfg = self.model.cfg
        for h in r["top_heads"]:
            h["head"] = (h["layer"], h["head"])
            # The model's shape, so that functional_circuit_alignment can draw its null.
            h["n_layers"], h["n_heads"] = cfg.n_layers, cfg.n_heads
        for s in r["trajectory"]:
            s["head"] = _head(s["head"])
        # The reference's further keys. MLP attributions are one more backward pass (Taylor),
        # none for an attention-only model.
        r["n_heads"] = len(r["circuit"])
        r["corr_prompt"] = r["corrupted_prompt"]
        r["corruption_metadata"] = {
            "strategy": r["corruption"],
            "rationale": "the corrupted prompt as given" if r["corruption"] == "given"
            else "the two answers' words swapped in the prompt, keeping its token count",
        }
        if cfg.d_mlp > 0:
            mlp = _call("attribution", self.model, c, _options(component="mlp", metric=_metric(metric)))
            r["mlp_attributions"] = {str(layer): float(row[0]) for layer, row in enumerate(mlp["scores"])}
        else:
            r["mlp_attributions"] = {}
        r["model_metadata"] = {"model_name": self.model.name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                               "d_model": cfg.d_model, "d_head": cfg.d_head, "glassbox_version": _native.__version__}
        return Result(r, "analyze", raw)

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
        ``integrated_gradients`` (``n_steps`` steps, exact path integral). ``n_steps`` defaults
        to 20 where the reference takes 10: on SmolLM2's IOI prompt the completeness residual
        is 7.9e-5 with 20 midpoint steps and 3.1e-4 with 10."""
        r = self._attribute(tokens_clean, tokens_corrupted, target_token, distractor_token, "heads", method, n_steps, metric)
        return _head_scores(r["scores"]), float(r["clean_ld"])

    def get_top_heads(self, attributions: Dict[Head, float], top_k: int = 10) -> List[Dict[str, Any]]:
        """The ``top_k`` heads of ``attributions`` (from ``attribution_patching``) by score,
        highest first, as the reference returns them: ``layer``, ``head``, ``attr`` and
        ``rel_depth`` (layer / (n_layers − 1)), the input ``functional_circuit_alignment``
        takes (with the model's shape, so that its null draws from the real model)."""
        if int(top_k) < 1:
            raise InputError(f"top_k must be at least 1; got {top_k}")
        cfg = self.model.cfg
        ranked = sorted(((tuple(k), float(v)) for k, v in attributions.items()), key=lambda kv: kv[1], reverse=True)[: int(top_k)]
        return [{"layer": int(l), "head": int(h), "attr": a, "rel_depth": l / max(cfg.n_layers - 1, 1),
                 "n_layers": cfg.n_layers, "n_heads": cfg.n_heads} for (l, h), a in ranked]

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
        opts = _options(component=component, **_method(method, n_steps), metric=_metric(metric))
        return _call("attribution", self.model, c, opts)

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
        a = _call("attribution", self.model, c, _options(**_method(method, n_steps), metric=_metric(metric)))
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
        block), ``head_direct_effects`` (``{layer: [effect per head]}``), ``mlp_direct_effects``
        (``{layer: effect}``), top tokens, and
        the reference's ``target_token`` / ``distractor_token`` (the answers as text)."""
        r = _call("logit-lens", self.model, self._prompt(tokens, target_token, distractor_token))
        raw = copy.deepcopy(r)
        text = lambda t: t if isinstance(t, str) else self.model.to_string([int(t)])  # noqa: E731
        r["target_token"], r["distractor_token"] = text(target_token), text(distractor_token)
        # The reference's forms: {layer: [effect per head]} and {layer: effect}.
        r["head_direct_effects"] = dict(enumerate(r["head_direct_effects"]))
        r["mlp_direct_effects"] = dict(enumerate(r["mlp_direct_effects"]))
        return Result(r, "logit-lens", raw)

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
        integrated gradients): ``top_edges`` (``sender``, ``receiver``, ``score``), ``n_edges``,
        and ``edge_scores``, every edge's score by ``"sender->receiver"``. glassbox's edges are
        MIB's (embeddings, heads and MLPs into each head's query, key and value, each MLP and the
        logits); the reference scores head → ``resid_pre`` of each later layer instead."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        if int(top_k) < 1:
            raise InputError(f"top_k must be at least 1; got {top_k}")
        # Every edge, for the reference's edge_scores (its picture and top_edges keep top_k).
        r = _call("edges", self.model, c, _options(**_method(method, n_steps), top_k=1 << 62, metric=_metric(metric)))
        edges = r["top_edges"]
        r["top_edges"] = edges[: int(top_k)]
        raw = copy.deepcopy(r)
        r["edge_scores"] = {f"{e['sender']}->{e['receiver']}": e["score"] for e in edges}
        return Result(r, "edges", raw)

    def attribution_stability(self, tokens: Tokens, target_token: Answer, distractor_token: Answer,
                              n_corruptions: int = 25, seed: int = 42, p: Optional[float] = None) -> Dict[str, Any]:
        """Per-head stability across random corruptions and the Kendall τ-b
        ``rank_consistency``; ``top_stable_heads`` carry ``head`` as a tuple;
        ``mean_attributions``, ``std_attributions`` and ``stability_scores`` list every head's
        figure, layer by layer, as the reference does (glassbox's standard deviation is the
        sample one, over n − 1, and its stability is clipped at 0). ``n_corruptions`` defaults to 25 where the reference takes 10: on SmolLM2's IOI
        prompt a head's stability moves between seeds by 0.048 on average with 25 corruptions
        and by 0.071 with 10."""
        r = _call("stability", self.model, self._prompt(tokens, target_token, distractor_token),
                  _options(n_corruptions=n_corruptions, seed=seed, p=p))
        raw = copy.deepcopy(r)
        for h in r["top_stable_heads"]:
            h["head"] = _head(h["head"])
        # The reference's per-head lists (every head, layer by layer).
        flat = lambda grid: [float(v) for row in grid for v in row]  # noqa: E731
        r["mean_attributions"] = flat(r.pop("mean"))
        r["std_attributions"] = flat(r.pop("std"))
        r["stability_scores"] = flat(r["stability"])
        return Result(r, "stability", raw)

    def token_attribution(self, tokens: Tokens, target_token: Answer, distractor_token: Answer,
                          method: str = "gradient_x_input", n_steps: int = 20, baseline: Any = None) -> Dict[str, Any]:
        """Input-token saliency: ``tokens`` and ``top_tokens`` (``token_str``, ``attribution``,
        ``position``), and the reference's lists ``token_ids``, ``token_strs``, ``attributions``
        and ``abs_attributions``."""
        opts = _options(method=method, n_steps=int(n_steps), baseline=baseline)
        r = _call("token-attribution", self.model, self._prompt(tokens, target_token, distractor_token), opts)
        raw = copy.deepcopy(r)
        # The reference's per-token lists.
        r["token_ids"] = [t["token_id"] for t in r["tokens"]]
        r["token_strs"] = [t["token_str"] for t in r["tokens"]]
        r["attributions"] = [t["attribution"] for t in r["tokens"]]
        r["abs_attributions"] = [abs(a) for a in r["attributions"]]
        return Result(r, "token-attribution", raw)

    def attention_patterns(self, tokens: Tokens, heads: Optional[Sequence[Head]] = None, top_k: int = 10,
                           seed: Optional[int] = None) -> Dict[str, Any]:
        """Patterns, ``entropy`` and ``head_types`` (keys ``L09H09``) of the given heads, or of
        the ``top_k`` most distinctive heads when ``heads`` is None; the reference's
        ``patterns`` (``[query, key]`` lists), ``last_tok_attn`` (the last query's row) and
        ``token_strs`` beside them."""
        opts = _options(heads=[list(h) for h in heads] if heads is not None else None, top_k=top_k, seed=seed)
        r = _call("attention", self.model, tokens, opts)
        raw = copy.deepcopy(r)
        for h in r["heads"]:
            h["head"] = _head(h["head"])
        r["patterns"] = {h["name"]: h["pattern"] for h in r["heads"]}
        r["last_tok_attn"] = {h["name"]: h["pattern"][-1] for h in r["heads"]}
        r["token_strs"] = list(r["tokens"])
        return Result(r, "attention", raw)

    # ---- across models ---------------------------------------------------------------------

    def functional_circuit_alignment(self, heads_a: Sequence[Any], heads_b: Sequence[Any], top_k: int = 5,
                                     n_null: int = 10000, model_b: Optional[Model] = None, seed: int = 0) -> Dict[str, Any]:
        """FCAS between this model's ranked heads and another model's: ``1 − mean |depth_a −
        depth_b|`` over the rank-matched top ``top_k`` (relative depth ``layer / (n_layers −
        1)``), with ``null_mean``, ``null_std``, ``z_score`` and the empirical ``p_value`` from
        ``n_null`` random head sets of the two real models. Heads are ``analyze(...)["top_heads"]``
        entries (which carry their model's shape) or ``(layer, head)`` tuples with ``model_b``."""
        def ranking(hs):
            return [(int(h["layer"]), int(h["head"][1] if isinstance(h["head"], tuple) else h["head"])) if isinstance(h, dict)
                    else (int(h[0]), int(h[1])) for h in hs]

        def shape_of(hs, model, which):
            if model is not None:
                return (model.cfg.n_layers, model.cfg.n_heads)
            first = hs[0] if len(hs) else None
            if isinstance(first, dict) and "n_layers" in first:
                return (int(first["n_layers"]), int(first["n_heads"]))
            raise InputError(f"the heads of model {which} do not say its shape; pass analyze(...)['top_heads'] "
                             "or give model_b, so the null draws from the real model's heads")

        shape_a = (self.model.cfg.n_layers, self.model.cfg.n_heads)
        shape_b = shape_of(heads_b, model_b, "B")
        return _native.functional_circuit_alignment(ranking(heads_a), shape_a, ranking(heads_b), shape_b,
                                                    {"top_k": top_k, "n_null": n_null, "seed": seed})

    # ---- sets ------------------------------------------------------------------------------

    def bootstrap_metrics(self, prompts: Sequence[Tuple[str, str, str]], n_boot: int = 500, seed: int = 0,
                          method: str = "taylor", n_steps: int = 20, target: Optional[float] = None) -> Dict[str, Any]:
        """Faithfulness of one circuit found over the prompts ``(prompt, correct, incorrect)``
        (corrupted by swapping the answers' words), with percentile-bootstrap 95 % intervals:
        ``sufficiency``, ``comprehensiveness`` and ``f1``, each ``{mean, std, ci_lo, ci_hi, n}``,
        plus the ``circuit`` and the per-prompt figures."""
        contrasts = [_native.contrast(self.model, p, c, i, None) for (p, c, i) in prompts]
        r = _call("analyze", self.model, contrasts, _options(**_method(method, n_steps), target=target, n_boot=n_boot, seed=seed))
        out = dict(r["bootstrap"])
        out["circuit"] = _heads(r["circuit"])
        out["faithfulness"] = r["faithfulness"]
        out["prompts"] = r["prompts"]
        return out

    def analyze_set(self, prompts: Sequence[Tuple[str, str, str]], n_boot: int = 1000, seed: int = 0,
                    method: str = "taylor", n_steps: int = 20) -> Dict[str, Any]:
        """glassbox's ``analyze`` over a prompt set: one circuit, mean figures, bootstrap CIs."""
        contrasts = [_native.contrast(self.model, p, c, i, None) for (p, c, i) in prompts]
        r = _call("analyze", self.model, contrasts, {**_method(method, n_steps), "n_boot": n_boot, "seed": seed})
        r["circuit"] = _heads(r["circuit"])
        return r

    # ---- glassbox's methods beyond the reference tool ------------------------------------

    def exact_patching(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                       direction: str = "into_clean", metric: Any = None) -> Dict[str, Any]:
        """Exact activation patching of every head and MLP (batched): ``heads[layer][head]``,
        ``mlps[layer]`` (normalised) and their raw effects."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        return Result(_call("patch", self.model, c, _options(direction=direction, metric=_metric(metric))), "patch")

    def path_patching(self, tokens_clean: Tokens, tokens_corrupted: Tokens, target_token: Answer, distractor_token: Answer,
                      receiver: Any = "logits", senders: Optional[Sequence[Head]] = None, metric: Any = None) -> Dict[str, Any]:
        """Path patching from every earlier head (or ``senders``) to ``receiver``: ``"logits"``,
        or a head's input ``"L10H7.q"`` / ``"L10KV1.k"`` / ``"L10KV1.v"`` (``{"q": [layer, head]}`` is read too)."""
        c = self._contrast(tokens_clean, tokens_corrupted, target_token, distractor_token)
        opts = _options(receiver=receiver, senders=[list(h) for h in senders] if senders is not None else None, metric=_metric(metric))
        return Result(_call("path-patch", self.model, c, opts), "path-patch")

    def causal_scrubbing(self, hypothesis: Dict[Head, str], n: int = 32, seed: int = 0) -> Dict[str, Any]:
        """Causal scrubbing of ``{(layer, head): feature}`` (features ``io``, ``subject``,
        ``template``, ``order``) on ``n`` generated IOI prompts."""
        opts = {"hypothesis": [[list(h), f] for h, f in hypothesis.items()], "seed": seed}
        return _call("scrub", self.model, {"task": "ioi", "n": n, "seed": seed}, opts)


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

    def composition_matrix(self, senders: Sequence[Head], receivers: Sequence[Head], kind: str = "q") -> Dict[str, Any]:
        """The reference's matrix of one composition ``kind`` (``q``, ``k`` or ``v``):
        ``matrix[i][j]`` = receiver ``i`` composing with sender ``j`` (a list of lists),
        ``senders``/``receivers`` as ``L09H06`` names, and the 10 ``top_pairs`` by score."""
        kind = str(kind).lower()
        if kind not in ("q", "k", "v"):
            raise InputError(f"kind must be 'q', 'k' or 'v'; got {kind!r}")
        senders, receivers = _heads(senders), _heads(receivers)
        name = lambda h: f"L{h[0]:02}H{h[1]:02}"  # noqa: E731
        matrix = [[float(_native.composition_score(self.model, s, r, kind)) for s in senders] for r in receivers]
        pairs = [{"sender": name(s), "receiver": name(r), "score": matrix[i][j], "kind": kind}
                 for i, r in enumerate(receivers) for j, s in enumerate(senders)]
        pairs.sort(key=lambda p: p["score"], reverse=True)
        return {"matrix": matrix, "senders": [name(s) for s in senders], "receivers": [name(r) for r in receivers],
                "kind": kind, "top_pairs": pairs[:10]}

    def all_composition_scores(self, circuit: Sequence[Head], min_score: Optional[float] = None) -> Dict[str, Any]:
        """Scores between every ordered pair of the circuit's heads (earlier → later):
        ``combined_edges`` with ``sender``, ``receiver``, ``q``, ``k``, ``v``."""
        return Result(_call("composition", self.model, None, {"heads": [list(h) for h in circuit], "min_score": min_score}), "composition")


class SAEFeatureAttributor:
    """The reference tool's SAE feature attribution, on SAEs given as folders (SAELens'
    format or Gemma Scope's parameters) or loaded ``glassbox.SAE``s: no pretrained SAE is
    downloaded. ``saes`` is one SAE or path, a list of them, or ``{path: hook}`` for files that
    name no hook point."""

    def __init__(self, model: Model, saes: Any) -> None:
        self.model = model
        if isinstance(saes, dict):
            loaded = [_native.SAE.load(str(p), hook) for p, hook in saes.items()]
        else:
            items = saes if isinstance(saes, (list, tuple)) else [saes]
            loaded = [s if isinstance(s, _native.SAE) else _native.SAE.load(str(s)) for s in items]
        if not loaded:
            raise InputError("give at least one SAE (a folder or a glassbox.SAE)")
        self.saes = loaded

    def attribute(self, tokens: Tokens, target_token: Answer, distractor_token: Answer,
                  layers: Optional[Sequence[int]] = None, top_k: int = 20, n_exact: int = 10,
                  metric: Any = None) -> Dict[str, Any]:
        """Decomposes the prediction into the SAEs' features: ``top_features`` (``layer``,
        ``feature_id``, ``activation`` at the answer position, ``ld_contribution`` =
        gradient × activation summed over positions, ``exact_effect`` of removing the feature
        for the top ``n_exact``, ``direct_effect`` for residual-stream SAEs, ``direction``
        (``target``/``distractor``), ``neuronpedia_url``), over the SAEs whose layer is in
        ``layers`` (all by default), and ``per_sae``: each SAE's full result."""
        p = _native.prompt(self.model, tokens, target_token, distractor_token)
        opts = _options(top_k=top_k, n_exact=n_exact, metric=_metric(metric))
        per = []
        for sae in self.saes:
            layer = _layer_of(sae.hook_name)
            if layers is not None and layer not in layers:
                continue
            per.append(_call("sae-attribute", self.model, p, opts, sae=sae))
        if not per:
            raise InputError(f"no SAE at layers {list(layers or [])}; the SAEs read "
                             + ", ".join(s.hook_name for s in self.saes))
        feats = sorted((f for r in per for f in r["top_features"]), key=lambda f: -abs(f["ld_contribution"]))[:top_k]
        raw = dict(per[0]) if len(per) == 1 else {**per[0], "top_features": feats, "hook": ", ".join(r["hook"] for r in per)}
        out = {"top_features": feats, "per_sae": per, "clean_ld": per[0]["clean_ld"], "metric": per[0]["metric"]}
        return Result(out, "sae-attribute", raw)


    def attribute_circuit_heads(self, circuit: Sequence[Head], tokens: Tokens, target_token: Answer,
                                distractor_token: Answer, top_k: int = 10) -> Dict[str, Any]:
        """Which active features each circuit head writes to at the answer position, per
        residual-stream SAE after the heads: ``{hook: {"heads": [{"head", "top_features":
        [{"feature_id", "head_contribution", "pre_activation", "activation",
        "ld_contribution", "neuronpedia_url"}]}], "approximation": ...}}`` — a linear
        approximation (the head's result projected on each feature's encoder direction),
        stated in ``approximation``."""
        p = _native.prompt(self.model, tokens, target_token, distractor_token)
        heads = [list(h) for h in circuit]
        last = max(h[0] for h in heads)
        out = {}
        for sae in self.saes:
            hook = sae.hook_name
            layer = _layer_of(hook)
            ok = ("hook_resid_post" in hook and layer >= last) or (("hook_resid_pre" in hook or "hook_resid_mid" in hook) and layer > last)
            if ok and sae.cfg["hook_out"] is None:
                out[hook] = _call("sae-circuit-features", self.model, p, {"heads": heads, "top_k": top_k}, sae=sae)
        if not out:
            raise InputError("no residual-stream SAE reads after the circuit's last layer; give one further on")
        return out


def _layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1
