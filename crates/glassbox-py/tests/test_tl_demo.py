"""TransformerLens' "Exploratory Analysis Demo" (its IOI notebook), the residual-stream
activation-patching loop, written as TransformerLens code. Changed lines, each marked:
the imports (``glassbox`` for ``transformer_lens``, numpy for torch), the model line, one
prompt group instead of four (the loop runs 30 layers × 15 positions on a CPU), and the two
torch calls numpy spells otherwise (``torch.zeros`` → ``np.zeros``, ``tensor.gather`` →
``np.take_along_axis``, ``torch.concat`` → ``np.concatenate``). The result is checked against
the same patches made as glassbox's declarative interventions."""

import warnings
from functools import partial

import numpy as np  # CHANGED: numpy in place of torch (glassbox returns numpy arrays)
import pytest

import glassbox
from glassbox import HookedTransformer  # CHANGED: from transformer_lens import HookedTransformer
import glassbox.utils as utils  # CHANGED: import transformer_lens.utils as utils


@pytest.fixture(scope="module")
def demo():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # CHANGED: the model line (gpt2-small → SmolLM2-135M).
        model = HookedTransformer.from_pretrained(
            "smollm2-135m",
            center_unembed=True,
            center_writing_weights=True,
            fold_ln=True,
            refactor_factored_attn_matrices=True,
        )
    # glassbox says it does not apply TransformerLens' weight processing.
    assert any("does not apply" in str(w.message) for w in caught)

    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
    ]  # CHANGED: one of the four groups
    name_pairs = [
        (" Mary", " John"),
    ]

    # Define 2 prompts, in 1 group of 2 (with adjacent prompts having answers swapped)
    prompts = [prompt.format(name) for (prompt, names) in zip(prompt_format, name_pairs) for name in names[::-1]]
    # Define the answers for each prompt, in the form (correct, incorrect)
    answers = [names[::i] for names in name_pairs for i in (1, -1)]
    # Define the answer tokens (same shape as the answers)
    answer_tokens = np.concatenate([model.to_tokens(names, prepend_bos=False).T for names in answers])  # CHANGED: torch.concat

    tokens = model.to_tokens(prompts, prepend_bos=True)
    # Run the model and cache all activations
    original_logits, cache = model.run_with_cache(tokens)

    def logits_to_ave_logit_diff(logits, answer_tokens=answer_tokens, per_prompt=False):
        """Returns logit difference between the correct and incorrect answer.

        If per_prompt=True, return the array of differences rather than the average.
        """
        # Only the final logits are relevant for the answer
        final_logits = logits[:, -1, :]
        # Get the logits corresponding to the indirect object / subject tokens respectively
        answer_logits = np.take_along_axis(final_logits, answer_tokens, axis=-1)  # CHANGED: final_logits.gather(dim=-1, index=answer_tokens)
        # Find logit difference
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        return answer_logit_diff if per_prompt else answer_logit_diff.mean()

    corrupted_prompts = []
    for i in range(0, len(prompts), 2):
        corrupted_prompts.append(prompts[i + 1])
        corrupted_prompts.append(prompts[i])
    corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens, return_type="logits")
    corrupted_average_logit_diff = logits_to_ave_logit_diff(corrupted_logits, answer_tokens)
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)

    def patch_residual_component(corrupted_residual_component, hook, pos, clean_cache):
        corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
        return corrupted_residual_component

    def normalize_patched_logit_diff(patched_logit_diff):
        # Subtract corrupted logit diff to measure the improvement, divide by the total improvement from clean to corrupted to normalise
        # 0 means zero change, negative means actively made worse, 1 means totally recovered clean performance, >1 means actively *improved* on clean performance
        return (patched_logit_diff - corrupted_average_logit_diff) / (original_average_logit_diff - corrupted_average_logit_diff)

    patched_residual_stream_diff = np.zeros((model.cfg.n_layers, tokens.shape[1]), dtype=np.float32)  # CHANGED: torch.zeros(..., device=device)
    for layer in range(model.cfg.n_layers):
        for position in range(tokens.shape[1]):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

            patched_residual_stream_diff[layer, position] = normalize_patched_logit_diff(patched_logit_diff)

    return dict(model=model, tokens=tokens, corrupted_tokens=corrupted_tokens, cache=cache, answer_tokens=answer_tokens,
                clean=original_average_logit_diff, corrupted=corrupted_average_logit_diff, grid=patched_residual_stream_diff)


def test_the_demo_runs_as_written(demo):
    model, grid, tokens = demo["model"], demo["grid"], demo["tokens"]
    # Equal-length prompts (the demo relies on it: no padding).
    assert tokens.shape == (2, grid.shape[1])
    assert demo["clean"] > 1.0 > 0.0 > demo["corrupted"], (demo["clean"], demo["corrupted"])
    # Patching the whole stream at the first layer at every position restores the clean run;
    # the BOS position carries no difference.
    assert np.allclose(grid[:, 0], 0.0, atol=1e-4)
    # At the last layer the final position carries most of the difference (block 29 still
    # reads the other, corrupted positions), the others little.
    print("last layer:", np.round(grid[-1], 3), "first layer:", np.round(grid[0], 3))
    assert grid[-1, -1] > 0.5 and grid[-1, -1] > 5 * abs(grid[-1, :-1]).max()


def test_the_demo_equals_declarative_interventions(demo):
    """The same cells, patched with glassbox.Intervention instead of a Python hook."""
    model, cache, grid = demo["model"], demo["cache"], demo["grid"]
    answer_tokens = demo["answer_tokens"]
    last = grid.shape[1] - 1
    for layer, position in [(0, 2), (12, 4), (20, last), (29, 7)]:
        name = f"blocks.{layer}.hook_resid_pre"
        value = cache[name]
        logits = model.run_with_hooks(demo["corrupted_tokens"], interventions=[glassbox.Intervention(name, "replace", value=value, positions=[position])])
        final = logits[:, -1, :]
        ld = (np.take_along_axis(final, answer_tokens, axis=-1) @ np.array([1.0, -1.0])).mean()
        want = (ld - demo["corrupted"]) / (demo["clean"] - demo["corrupted"])
        assert grid[layer, position] == pytest.approx(want, abs=1e-4), (layer, position)


def test_hooked_transformer_refuses_what_it_cannot_do():
    with pytest.raises(glassbox.InputError, match="from_pretrained"):
        HookedTransformer({"n_layers": 2})
    with pytest.raises(glassbox.InputError, match="device"):
        HookedTransformer.from_pretrained_no_processing("smollm2-135m", device="cuda")
    with pytest.raises(glassbox.InputError, match="fold_ln"):
        HookedTransformer.from_pretrained_no_processing("smollm2-135m", fold_ln=True)
    with pytest.raises(glassbox.InputError, match="n_ctx_override"):
        HookedTransformer.from_pretrained_no_processing("smollm2-135m", n_ctx_override=4)
