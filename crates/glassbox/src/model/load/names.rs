//! Tensor-name maps: for each family and file format, where each weight of `Weights` lives.
//! Pure data; `build_weights` reads any of them. `{l}` stands for the layer index.

/// One tensor of a map: required, optional (a bias some checkpoints have), or absent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum T {
    Req(&'static str),
    Opt(&'static str),
    No,
}

/// How the query, key and value projections are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Qkv {
    Separate { q: T, k: T, v: T, bq: T, bk: T, bv: T },
    /// One matrix with rows `[q; k; v]` (after transposing a Conv1D layout), and its bias.
    Fused { w: T, b: T },
    /// One matrix with rows `[head][q, k, v][d_head]` (GPT-NeoX), and its bias.
    FusedPerHead { w: T, b: T },
}

/// How a checkpoint stores linear maps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Linear {
    /// `[out, in]`, as `torch.nn.Linear` (and GGUF, whose dims candle reverses to the same).
    OutIn,
    /// `[in, out]`, as GPT-2's `Conv1D`.
    InOut,
}

#[derive(Debug, Clone, Copy)]
pub struct TensorNames {
    pub linear: Linear,
    pub embed: T,
    pub pos_embed: T,
    pub ln1_w: T,
    pub ln1_b: T,
    pub qkv: Qkv,
    pub o: T,
    pub bo: T,
    pub ln2_w: T,
    pub ln2_b: T,
    pub mlp_in: T,
    pub mlp_b_in: T,
    pub mlp_gate: T,
    pub mlp_b_gate: T,
    /// One matrix with rows `[gate; up]` in place of `mlp_gate` and `mlp_in` (Phi-3).
    pub mlp_gate_up: T,
    pub mlp_out: T,
    pub mlp_b_out: T,
    pub ln_final_w: T,
    pub ln_final_b: T,
    /// Absent from the file exactly when the embeddings are tied.
    pub unembed: T,
    pub unembed_b: T,
    /// llama.cpp permutes the rows of Q and K for interleaved rotary; undo it at load.
    pub qk_rows_permuted: bool,
    /// Norms on the attention and MLP outputs (Gemma 2/3).
    pub ln1_post: T,
    pub ln2_post: T,
    /// Per-head query and key norms (Gemma 3).
    pub q_norm: T,
    pub k_norm: T,
    /// Norm weights are stored as `w` for a `(1 + w)` scale (Hugging Face Gemma): add 1.
    pub norm_plus_one: bool,
    /// Mixture of experts: the router, and each expert's maps (`{e}` is the expert).
    pub moe_router: T,
    pub expert_gate: T,
    pub expert_up: T,
    pub expert_down: T,
    /// The experts' maps are stacked in one tensor each, `[n_experts, out, in]` (llama.cpp's
    /// `ffn_*_exps`), instead of one tensor per expert.
    pub experts_stacked: bool,
    /// A shared expert's maps and its gate (Qwen2-MoE).
    pub shared_gate: T,
    pub shared_up: T,
    pub shared_down: T,
    pub shared_expert_gate: T,
    /// Linear maps between a narrower embedding and the residual stream (OPT-350m): folded
    /// into the embedding and the unembedding at load.
    pub project_in: T,
    pub project_out: T,
}

/// The fields most families leave out.
pub(crate) const NONE: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: No,
    pos_embed: No,
    ln1_w: No,
    ln1_b: No,
    qkv: Qkv::Fused { w: No, b: No },
    o: No,
    bo: No,
    ln2_w: No,
    ln2_b: No,
    mlp_in: No,
    mlp_b_in: No,
    mlp_gate: No,
    mlp_b_gate: No,
    mlp_gate_up: No,
    mlp_out: No,
    mlp_b_out: No,
    ln_final_w: No,
    ln_final_b: No,
    unembed: No,
    unembed_b: No,
    qk_rows_permuted: false,
    ln1_post: No,
    ln2_post: No,
    q_norm: No,
    k_norm: No,
    norm_plus_one: false,
    moe_router: No,
    expert_gate: No,
    expert_up: No,
    expert_down: No,
    experts_stacked: false,
    shared_gate: No,
    shared_up: No,
    shared_down: No,
    shared_expert_gate: No,
    project_in: No,
    project_out: No,
};

use T::{No, Opt, Req};

pub const GPT2_HF: TensorNames = TensorNames {
    linear: Linear::InOut,
    embed: Req("transformer.wte.weight"),
    pos_embed: Req("transformer.wpe.weight"),
    ln1_w: Req("transformer.h.{l}.ln_1.weight"),
    ln1_b: Req("transformer.h.{l}.ln_1.bias"),
    qkv: Qkv::Fused {
        w: Req("transformer.h.{l}.attn.c_attn.weight"),
        b: Req("transformer.h.{l}.attn.c_attn.bias"),
    },
    o: Req("transformer.h.{l}.attn.c_proj.weight"),
    bo: Req("transformer.h.{l}.attn.c_proj.bias"),
    ln2_w: Req("transformer.h.{l}.ln_2.weight"),
    ln2_b: Req("transformer.h.{l}.ln_2.bias"),
    mlp_in: Req("transformer.h.{l}.mlp.c_fc.weight"),
    mlp_b_in: Req("transformer.h.{l}.mlp.c_fc.bias"),
    mlp_gate: No,
    mlp_out: Req("transformer.h.{l}.mlp.c_proj.weight"),
    mlp_b_out: Req("transformer.h.{l}.mlp.c_proj.bias"),
    ln_final_w: Req("transformer.ln_f.weight"),
    ln_final_b: Req("transformer.ln_f.bias"),
    unembed: Opt("lm_head.weight"),
    unembed_b: No,
    qk_rows_permuted: false,
    ..NONE
};

pub const LLAMA_HF: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: Req("model.embed_tokens.weight"),
    pos_embed: No,
    ln1_w: Req("model.layers.{l}.input_layernorm.weight"),
    ln1_b: No,
    qkv: Qkv::Separate {
        q: Req("model.layers.{l}.self_attn.q_proj.weight"),
        k: Req("model.layers.{l}.self_attn.k_proj.weight"),
        v: Req("model.layers.{l}.self_attn.v_proj.weight"),
        bq: Opt("model.layers.{l}.self_attn.q_proj.bias"),
        bk: Opt("model.layers.{l}.self_attn.k_proj.bias"),
        bv: Opt("model.layers.{l}.self_attn.v_proj.bias"),
    },
    o: Req("model.layers.{l}.self_attn.o_proj.weight"),
    bo: Opt("model.layers.{l}.self_attn.o_proj.bias"),
    ln2_w: Req("model.layers.{l}.post_attention_layernorm.weight"),
    ln2_b: No,
    mlp_in: Req("model.layers.{l}.mlp.up_proj.weight"),
    mlp_b_in: Opt("model.layers.{l}.mlp.up_proj.bias"),
    mlp_gate: Req("model.layers.{l}.mlp.gate_proj.weight"),
    mlp_b_gate: Opt("model.layers.{l}.mlp.gate_proj.bias"),
    mlp_out: Req("model.layers.{l}.mlp.down_proj.weight"),
    mlp_b_out: Opt("model.layers.{l}.mlp.down_proj.bias"),
    ln_final_w: Req("model.norm.weight"),
    ln_final_b: No,
    unembed: Opt("lm_head.weight"),
    unembed_b: No,
    qk_rows_permuted: false,
    ..NONE
};

pub const LLAMA_GGUF: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: Req("token_embd.weight"),
    pos_embed: No,
    ln1_w: Req("blk.{l}.attn_norm.weight"),
    ln1_b: No,
    qkv: Qkv::Separate {
        q: Req("blk.{l}.attn_q.weight"),
        k: Req("blk.{l}.attn_k.weight"),
        v: Req("blk.{l}.attn_v.weight"),
        bq: Opt("blk.{l}.attn_q.bias"),
        bk: Opt("blk.{l}.attn_k.bias"),
        bv: Opt("blk.{l}.attn_v.bias"),
    },
    o: Req("blk.{l}.attn_output.weight"),
    bo: Opt("blk.{l}.attn_output.bias"),
    ln2_w: Req("blk.{l}.ffn_norm.weight"),
    ln2_b: No,
    mlp_in: Req("blk.{l}.ffn_up.weight"),
    mlp_b_in: No,
    mlp_gate: Req("blk.{l}.ffn_gate.weight"),
    mlp_out: Req("blk.{l}.ffn_down.weight"),
    mlp_b_out: No,
    ln_final_w: Req("output_norm.weight"),
    ln_final_b: No,
    unembed: Opt("output.weight"),
    unembed_b: No,
    qk_rows_permuted: true,
    // Mixtral as llama.cpp writes it: the router and the experts stacked.
    moe_router: Req("blk.{l}.ffn_gate_inp.weight"),
    expert_gate: Req("blk.{l}.ffn_gate_exps.weight"),
    expert_up: Req("blk.{l}.ffn_up_exps.weight"),
    expert_down: Req("blk.{l}.ffn_down_exps.weight"),
    experts_stacked: true,
    ..NONE
};

pub const MIXTRAL_HF: TensorNames = TensorNames {
    mlp_in: No,
    mlp_gate: No,
    mlp_out: No,
    mlp_b_in: No,
    mlp_b_out: No,
    moe_router: Req("model.layers.{l}.block_sparse_moe.gate.weight"),
    expert_gate: Req("model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight"),
    expert_up: Req("model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight"),
    expert_down: Req("model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight"),
    ..LLAMA_HF
};

pub const GEMMA_HF: TensorNames = TensorNames {
    norm_plus_one: true,
    ..LLAMA_HF
};

/// Gemma 2: the norm after attention is `post_attention_layernorm`; the MLP has its own pre-norm.
pub const GEMMA2_HF: TensorNames = TensorNames {
    ln1_post: Req("model.layers.{l}.post_attention_layernorm.weight"),
    ln2_w: Req("model.layers.{l}.pre_feedforward_layernorm.weight"),
    ln2_post: Req("model.layers.{l}.post_feedforward_layernorm.weight"),
    ..GEMMA_HF
};

pub const GEMMA3_HF: TensorNames = TensorNames {
    q_norm: Req("model.layers.{l}.self_attn.q_norm.weight"),
    k_norm: Req("model.layers.{l}.self_attn.k_norm.weight"),
    ..GEMMA2_HF
};

pub const NEOX_HF: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: Req("gpt_neox.embed_in.weight"),
    ln1_w: Req("gpt_neox.layers.{l}.input_layernorm.weight"),
    ln1_b: Req("gpt_neox.layers.{l}.input_layernorm.bias"),
    qkv: Qkv::FusedPerHead {
        w: Req("gpt_neox.layers.{l}.attention.query_key_value.weight"),
        b: Opt("gpt_neox.layers.{l}.attention.query_key_value.bias"),
    },
    o: Req("gpt_neox.layers.{l}.attention.dense.weight"),
    bo: Opt("gpt_neox.layers.{l}.attention.dense.bias"),
    ln2_w: Req("gpt_neox.layers.{l}.post_attention_layernorm.weight"),
    ln2_b: Req("gpt_neox.layers.{l}.post_attention_layernorm.bias"),
    mlp_in: Req("gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight"),
    mlp_b_in: Opt("gpt_neox.layers.{l}.mlp.dense_h_to_4h.bias"),
    mlp_out: Req("gpt_neox.layers.{l}.mlp.dense_4h_to_h.weight"),
    mlp_b_out: Opt("gpt_neox.layers.{l}.mlp.dense_4h_to_h.bias"),
    ln_final_w: Req("gpt_neox.final_layer_norm.weight"),
    ln_final_b: Req("gpt_neox.final_layer_norm.bias"),
    unembed: Opt("embed_out.weight"),
    ..NONE
};

pub const OPT_HF: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: Req("model.decoder.embed_tokens.weight"),
    pos_embed: Req("model.decoder.embed_positions.weight"),
    ln1_w: Req("model.decoder.layers.{l}.self_attn_layer_norm.weight"),
    ln1_b: Req("model.decoder.layers.{l}.self_attn_layer_norm.bias"),
    qkv: Qkv::Separate {
        q: Req("model.decoder.layers.{l}.self_attn.q_proj.weight"),
        k: Req("model.decoder.layers.{l}.self_attn.k_proj.weight"),
        v: Req("model.decoder.layers.{l}.self_attn.v_proj.weight"),
        bq: Opt("model.decoder.layers.{l}.self_attn.q_proj.bias"),
        bk: Opt("model.decoder.layers.{l}.self_attn.k_proj.bias"),
        bv: Opt("model.decoder.layers.{l}.self_attn.v_proj.bias"),
    },
    o: Req("model.decoder.layers.{l}.self_attn.out_proj.weight"),
    bo: Opt("model.decoder.layers.{l}.self_attn.out_proj.bias"),
    ln2_w: Req("model.decoder.layers.{l}.final_layer_norm.weight"),
    ln2_b: Req("model.decoder.layers.{l}.final_layer_norm.bias"),
    mlp_in: Req("model.decoder.layers.{l}.fc1.weight"),
    mlp_b_in: Opt("model.decoder.layers.{l}.fc1.bias"),
    mlp_out: Req("model.decoder.layers.{l}.fc2.weight"),
    mlp_b_out: Opt("model.decoder.layers.{l}.fc2.bias"),
    ln_final_w: Opt("model.decoder.final_layer_norm.weight"),
    ln_final_b: Opt("model.decoder.final_layer_norm.bias"),
    unembed: Opt("lm_head.weight"),
    ..NONE
};

pub const GPTNEO_HF: TensorNames = TensorNames {
    linear: Linear::OutIn,
    embed: Req("transformer.wte.weight"),
    pos_embed: Req("transformer.wpe.weight"),
    ln1_w: Req("transformer.h.{l}.ln_1.weight"),
    ln1_b: Req("transformer.h.{l}.ln_1.bias"),
    qkv: Qkv::Separate {
        q: Req("transformer.h.{l}.attn.attention.q_proj.weight"),
        k: Req("transformer.h.{l}.attn.attention.k_proj.weight"),
        v: Req("transformer.h.{l}.attn.attention.v_proj.weight"),
        bq: No,
        bk: No,
        bv: No,
    },
    o: Req("transformer.h.{l}.attn.attention.out_proj.weight"),
    bo: Req("transformer.h.{l}.attn.attention.out_proj.bias"),
    ln2_w: Req("transformer.h.{l}.ln_2.weight"),
    ln2_b: Req("transformer.h.{l}.ln_2.bias"),
    mlp_in: Req("transformer.h.{l}.mlp.c_fc.weight"),
    mlp_b_in: Req("transformer.h.{l}.mlp.c_fc.bias"),
    mlp_out: Req("transformer.h.{l}.mlp.c_proj.weight"),
    mlp_b_out: Req("transformer.h.{l}.mlp.c_proj.bias"),
    ln_final_w: Req("transformer.ln_f.weight"),
    ln_final_b: Req("transformer.ln_f.bias"),
    unembed: Opt("lm_head.weight"),
    ..NONE
};

pub const QWEN3_HF: TensorNames = TensorNames {
    q_norm: Req("model.layers.{l}.self_attn.q_norm.weight"),
    k_norm: Req("model.layers.{l}.self_attn.k_norm.weight"),
    ..LLAMA_HF
};

/// Qwen2-MoE: the router is `mlp.gate`, experts `mlp.experts.{e}`, and a shared expert with
/// its sigmoid gate.
pub const QWEN2_MOE_HF: TensorNames = TensorNames {
    mlp_in: No,
    mlp_gate: No,
    mlp_out: No,
    mlp_b_in: No,
    mlp_b_gate: No,
    mlp_b_out: No,
    moe_router: Req("model.layers.{l}.mlp.gate.weight"),
    expert_gate: Req("model.layers.{l}.mlp.experts.{e}.gate_proj.weight"),
    expert_up: Req("model.layers.{l}.mlp.experts.{e}.up_proj.weight"),
    expert_down: Req("model.layers.{l}.mlp.experts.{e}.down_proj.weight"),
    shared_gate: Opt("model.layers.{l}.mlp.shared_expert.gate_proj.weight"),
    shared_up: Opt("model.layers.{l}.mlp.shared_expert.up_proj.weight"),
    shared_down: Opt("model.layers.{l}.mlp.shared_expert.down_proj.weight"),
    shared_expert_gate: Opt("model.layers.{l}.mlp.shared_expert_gate.weight"),
    ..LLAMA_HF
};

/// Qwen3-MoE: Qwen2-MoE's experts without the shared one, Qwen3's query/key norms.
pub const QWEN3_MOE_HF: TensorNames = TensorNames {
    q_norm: Req("model.layers.{l}.self_attn.q_norm.weight"),
    k_norm: Req("model.layers.{l}.self_attn.k_norm.weight"),
    ..QWEN2_MOE_HF
};

/// Phi-3: one `qkv_proj` with rows `[q; k; v]`, one `gate_up_proj` with rows `[gate; up]`.
pub const PHI3_HF: TensorNames = TensorNames {
    qkv: Qkv::Fused { w: Req("model.layers.{l}.self_attn.qkv_proj.weight"), b: No },
    mlp_in: No,
    mlp_gate: No,
    mlp_b_in: No,
    mlp_b_gate: No,
    mlp_gate_up: Req("model.layers.{l}.mlp.gate_up_proj.weight"),
    ..LLAMA_HF
};

/// OLMo-2: no norms before the sublayers; `post_attention_layernorm` and
/// `post_feedforward_layernorm` after them; query/key norms over the whole projections.
pub const OLMO2_HF: TensorNames = TensorNames {
    ln1_w: No,
    ln2_w: No,
    ln1_post: Req("model.layers.{l}.post_attention_layernorm.weight"),
    ln2_post: Req("model.layers.{l}.post_feedforward_layernorm.weight"),
    ..QWEN3_HF
};

pub const OPT_PROJ_HF: TensorNames = TensorNames {
    project_in: Opt("model.decoder.project_in.weight"),
    project_out: Opt("model.decoder.project_out.weight"),
    ..OPT_HF
};

/// Phi-3 as llama.cpp writes it: `attn_qkv` rows `[q; k; v]`, `ffn_up` rows `[gate; up]`,
/// rows unpermuted (NeoX-style rotary).
pub const PHI3_GGUF: TensorNames = TensorNames {
    qkv: Qkv::Fused { w: Req("blk.{l}.attn_qkv.weight"), b: No },
    mlp_in: No,
    mlp_gate: No,
    mlp_gate_up: Req("blk.{l}.ffn_up.weight"),
    qk_rows_permuted: false,
    ..LLAMA_GGUF
};

pub const QWEN2_GGUF: TensorNames = TensorNames {
    qk_rows_permuted: false,
    ..LLAMA_GGUF
};

pub const QWEN3_GGUF: TensorNames = TensorNames {
    q_norm: Req("blk.{l}.attn_q_norm.weight"),
    k_norm: Req("blk.{l}.attn_k_norm.weight"),
    ..QWEN2_GGUF
};

/// Gemma in GGUF: llama.cpp's converter stores every norm weight as `1 + w` already.
pub const GEMMA_GGUF: TensorNames = TensorNames {
    qk_rows_permuted: false,
    ..LLAMA_GGUF
};

pub const GEMMA2_GGUF: TensorNames = TensorNames {
    ln1_post: Req("blk.{l}.post_attention_norm.weight"),
    ln2_post: Req("blk.{l}.post_ffw_norm.weight"),
    ..GEMMA_GGUF
};

pub const GEMMA3_GGUF: TensorNames = TensorNames {
    qk_rows_permuted: false,
    ln1_post: Req("blk.{l}.post_attention_norm.weight"),
    ln2_post: Req("blk.{l}.post_ffw_norm.weight"),
    q_norm: Req("blk.{l}.attn_q_norm.weight"),
    k_norm: Req("blk.{l}.attn_k_norm.weight"),
    ..LLAMA_GGUF
};
