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
    pub mlp_out: T,
    pub mlp_b_out: T,
    pub ln_final_w: T,
    pub ln_final_b: T,
    /// Absent from the file exactly when the embeddings are tied.
    pub unembed: T,
    pub unembed_b: T,
    /// llama.cpp permutes the rows of Q and K for interleaved rotary; undo it at load.
    pub qk_rows_permuted: bool,
}

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
    mlp_out: Req("model.layers.{l}.mlp.down_proj.weight"),
    mlp_b_out: Opt("model.layers.{l}.mlp.down_proj.bias"),
    ln_final_w: Req("model.norm.weight"),
    ln_final_b: No,
    unembed: Opt("lm_head.weight"),
    unembed_b: No,
    qk_rows_permuted: false,
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
};
