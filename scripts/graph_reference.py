#!/usr/bin/env python3
"""The reference attribution graph from circuit-tracer itself, for crates/glassbox/tests/graph_reference.rs.

Builds a tiny LLaMA-like TransformerLens model with random weights (biases zero, RMSNorm
without weights, so that it is exactly a Hugging Face LlamaForCausalLM) and a random
per-layer JumpReLU skip-transcoder set, runs circuit-tracer 0.5.0's `attribute` on CPU with
its TransformerLens backend, and writes to tests/fixtures/graph/tiny-llama-ct/:

  config.json, model.safetensors, tokenizer.json   the model as a Hugging Face folder
  transcoders/config.yaml, layer_{l}.safetensors   the set in circuit-tracer's layout
  reference.json                                    tokens, targets, active features, the
                                                    adjacency matrix (dense), replacement and
                                                    completeness scores, prune_graph's masks
                                                    and cumulative scores, the frontend JSON

Run by hand in a virtualenv with `circuit-tracer==0.5.0` (it brings torch and
transformer-lens): `python scripts/graph_reference.py`. Deterministic (seed 0).
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformer_lens import HookedTransformerConfig  # noqa: E402
from circuit_tracer import ReplacementModel, attribute  # noqa: E402
from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet  # noqa: E402
from circuit_tracer.transcoder.activation_functions import JumpReLU  # noqa: E402
from circuit_tracer.graph import prune_graph, compute_graph_scores  # noqa: E402
from circuit_tracer.utils.create_graph_files import create_graph_files  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "graph" / "tiny-llama-ct"
D, H, DH, DMLP, V, L, F = 8, 2, 4, 16, 16, 2, 32


def main() -> None:
    torch.manual_seed(0)
    (OUT / "transcoders").mkdir(parents=True, exist_ok=True)
    words = ["<unk>", "<bos>"] + [f"w{i}" for i in range(V - 2)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", unk_token="<unk>")
    tok_dir = OUT / "tok"
    tok.save_pretrained(str(tok_dir))
    cfg = HookedTransformerConfig(
        n_layers=L, d_model=D, d_head=DH, n_heads=H, d_mlp=DMLP, d_vocab=V, n_ctx=64,
        act_fn="silu", normalization_type="RMSPre", positional_embedding_type="rotary",
        rotary_dim=DH, gated_mlp=True, final_rms=True, original_architecture="LlamaForCausalLM",
        model_name="tiny-llama-ct", tokenizer_name=str(tok_dir), default_prepend_bos=False,
        device="cpu", dtype=torch.float32, seed=0, eps=1e-5,
    )
    tcs = {}
    for layer in range(L):
        t = SingleLayerTranscoder(D, F, JumpReLU(torch.zeros(F), 0.1), layer, skip_connection=True,
                                  device=torch.device("cpu"), dtype=torch.float32)
        for _, p in t.named_parameters():
            nn.init.uniform_(p, -1, 1)
        nn.init.uniform_(t.activation_function.threshold, 0, 0.5)
        tcs[layer] = t
    tset = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="tiny-llama-ct")
    model = ReplacementModel.from_config(cfg, tset)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transcoders"):
                continue
            if name.split(".")[-1].startswith("b_"):
                p.zero_()  # LlamaForCausalLM has no biases
            else:
                nn.init.uniform_(p, -1, 1)

    # The model as a Hugging Face LlamaForCausalLM folder.
    sd = {}
    sd["model.embed_tokens.weight"] = model.embed.W_E.detach().clone()
    sd["lm_head.weight"] = model.unembed.W_U.detach().T.contiguous()
    sd["model.norm.weight"] = torch.ones(D)
    for layer in range(L):
        b = model.blocks[layer]
        pre = f"model.layers.{layer}."
        sd[pre + "input_layernorm.weight"] = torch.ones(D)
        sd[pre + "post_attention_layernorm.weight"] = torch.ones(D)
        for hf, w in [("q_proj", b.attn.W_Q), ("k_proj", b.attn.W_K), ("v_proj", b.attn.W_V)]:
            sd[pre + f"self_attn.{hf}.weight"] = w.detach().permute(0, 2, 1).reshape(H * DH, D).contiguous()
        sd[pre + "self_attn.o_proj.weight"] = b.attn.W_O.detach().reshape(H * DH, D).T.contiguous()
        mlp = b.mlp.old_mlp if hasattr(b.mlp, "old_mlp") else b.mlp
        sd[pre + "mlp.up_proj.weight"] = mlp.W_in.detach().T.contiguous()
        sd[pre + "mlp.gate_proj.weight"] = mlp.W_gate.detach().T.contiguous()
        sd[pre + "mlp.down_proj.weight"] = mlp.W_out.detach().T.contiguous()
    save_file(sd, str(OUT / "model.safetensors"))
    hf_cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": DMLP,
        "num_attention_heads": H, "num_key_value_heads": H, "head_dim": DH, "num_hidden_layers": L,
        "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "max_position_embeddings": 64, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 1, "torch_dtype": "float32",
    }
    (OUT / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    (OUT / "tokenizer.json").write_text((tok_dir / "tokenizer.json").read_text())

    # The set, in circuit-tracer's per-layer layout (glassbox's hook names for the same points:
    # with RMSNorm without weights, mlp.hook_in is ln2.hook_normalized).
    files = []
    for layer, t in tcs.items():
        f = f"layer_{layer}.safetensors"
        save_file({
            "W_enc": t.W_enc.detach().contiguous(), "W_dec": t.W_dec.detach().contiguous(),
            "b_enc": t.b_enc.detach().contiguous(), "b_dec": t.b_dec.detach().contiguous(),
            "activation_function.threshold": t.activation_function.threshold.detach().contiguous(),
            "W_skip": t.W_skip.detach().contiguous(),
        }, str(OUT / "transcoders" / f))
        files.append(f)
    (OUT / "transcoders" / "config.yaml").write_text(
        "model_kind: transcoder_set\nmodel_name: tiny-llama-ct\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\nscan: tiny-llama-ct\ntranscoders:\n" + "".join(f"  - {f}\n" for f in files))

    tokens = torch.tensor([1, 5, 7, 3, 9, 4])
    graph = attribute(tokens, model, batch_size=64, max_n_logits=10, desired_logit_prob=0.95)
    pr = prune_graph(graph, 0.8, 0.98)
    replacement, completeness = compute_graph_scores(graph)
    create_graph_files(graph, slug="tiny", output_path=str(OUT / "frontend"), node_threshold=0.8, edge_threshold=0.98)
    frontend = json.loads((OUT / "frontend" / "tiny.json").read_text())
    ref = {
        "tokens": tokens.tolist(),
        "logit_targets": [int(t.vocab_idx) for t in graph.logit_targets],
        "logit_probabilities": graph.logit_probabilities.tolist(),
        "active_features": graph.active_features.tolist(),
        "activation_values": graph.activation_values.tolist(),
        "selected_features": graph.selected_features.tolist(),
        "adjacency": graph.adjacency_matrix.tolist(),
        "replacement_score": float(replacement),
        "completeness_score": float(completeness),
        "node_mask": pr.node_mask.tolist(),
        "cumulative_scores": pr.cumulative_scores.tolist(),
        "n_links": int(pr.edge_mask.sum()),
        "frontend_node_ids": [n["node_id"] for n in frontend["nodes"]],
        "frontend_links": [[l["source"], l["target"], l["weight"]] for l in frontend["links"]],
    }
    (OUT / "reference.json").write_text(json.dumps(ref) + "\n")
    for p in [tok_dir, OUT / "frontend"]:
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    print(f"{len(ref['active_features'])} features, {len(ref['adjacency'])} nodes, scores {replacement:.4f} {completeness:.4f}")


if __name__ == "__main__":
    main()
