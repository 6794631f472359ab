"""The heads of a model and their weights: every attention head and every GDN (value) head, with the rows
and columns of the projections that belong to each, in any family's layout (Qwen3.5's interleaved q/gate
rows, GPT-2's fused Conv1D c_attn, grouped key/value heads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadInfo:
    name: str  # L{layer}.H{head}
    kind: str  # "attention" | "gdn"
    layer: int
    head: int



def _text_config(config):
    return getattr(config, "text_config", None) or config



def _unwrap(module):
    """The transformers module behind a bridge component (the bridge swaps components into the model)."""
    return getattr(module, "original_component", None) or module



def _layers(hf_model):
    """The text model's decoder blocks (model.layers, model.language_model.layers, transformer.h, ...)."""
    from toolkit.layout import decoder_layers

    return decoder_layers(hf_model)



def _attention_module(layer):
    """A decoder block's full-attention module: `self_attn` (Llama, Qwen) or `attn` (GPT-2)."""
    for name in ("self_attn", "attn", "attention"):
        module = getattr(layer, name, None)
        if module is not None:
            return _unwrap(module)
    raise ValueError(f"{type(layer).__name__}: no self_attn / attn module")



def list_heads(config) -> list[HeadInfo]:
    """Every head of the text model: GDN value heads of linear-attention layers, attention heads otherwise."""
    cfg = _text_config(config)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    heads = []
    for layer, kind in enumerate(types):
        if kind == "linear_attention":
            heads += [HeadInfo(f"L{layer}.H{h}", "gdn", layer, h) for h in range(cfg.linear_num_value_heads)]
        else:
            heads += [HeadInfo(f"L{layer}.H{h}", "attention", layer, h) for h in range(cfg.num_attention_heads)]
    return heads



def _conv1d_attention_slices(attn, head: int) -> dict[str, torch.Tensor]:
    """GPT-2 (transformers Conv1D, weight [in, out]): c_attn's columns are [q | k | v], each n_heads x d wide;
    the head owns columns head*d .. (head+1)*d of each block and rows head*d .. (head+1)*d of c_proj."""
    d, width = attn.head_dim, attn.split_size
    cols = [slice(i * width + head * d, i * width + (head + 1) * d) for i in range(3)]
    w = attn.c_attn.weight
    out = {"q_proj": w[:, cols[0]], "k_proj": w[:, cols[1]], "v_proj": w[:, cols[2]],
           "o_proj": attn.c_proj.weight[head * d:(head + 1) * d]}
    bias = getattr(attn.c_attn, "bias", None)
    if bias is not None:
        out.update({"q_bias": bias[cols[0]], "k_bias": bias[cols[1]], "v_bias": bias[cols[2]]})
    return out



def attention_head_slices(attn, head: int) -> dict[str, torch.Tensor] | None:
    """The weights one full-attention head owns: q_proj rows (Qwen3.5 interleaves [query | gate] per head:
    rows head*2d .. (head+1)*2d, not the first/second half), k/v rows of its kv group, o_proj columns
    (and the q/k/v bias entries where the projections have biases, and the q_norm/k_norm weights it shares).
    GPT-2's Conv1D: see `_conv1d_attention_slices`. None for a layout this does not know."""
    if hasattr(attn, "c_attn") and hasattr(attn, "c_proj"):
        return _conv1d_attention_slices(attn, head)
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return None
    config = getattr(attn, "config", None)
    n_heads = getattr(config, "num_attention_heads", None) or getattr(attn, "num_heads", None)
    n_kv = getattr(config, "num_key_value_heads", None) or getattr(attn, "num_key_value_heads", None) or n_heads
    d = attn.head_dim
    q = attn.q_proj.weight
    if q.shape[0] == n_heads * d * 2:  # Qwen3.5 / Qwen3-Next: per head [query rows, gate rows]
        q_rows = slice(head * 2 * d, (head + 1) * 2 * d)
    elif q.shape[0] == n_heads * d:
        q_rows = slice(head * d, (head + 1) * d)
    else:
        return None
    g = head // (n_heads // n_kv)
    kv_rows = slice(g * d, (g + 1) * d)
    out = {
        "q_proj": q[q_rows],
        "k_proj": attn.k_proj.weight[kv_rows],
        "v_proj": attn.v_proj.weight[kv_rows],
        "o_proj": attn.o_proj.weight[:, head * d:(head + 1) * d],
    }
    for key, proj, rows in (("q_bias", attn.q_proj, q_rows), ("k_bias", attn.k_proj, kv_rows),
                            ("v_bias", attn.v_proj, kv_rows)):
        if getattr(proj, "bias", None) is not None:
            out[key] = proj.bias[rows]
    for key in ("q_norm", "k_norm"):  # Qwen3.5 / Qwen3-Next: shared by the layer's heads, shapes every pattern
        weight = getattr(getattr(attn, key, None), "weight", None)
        if weight is not None:
            out[key] = weight
    return out



def gdn_head_slices(gdn, head: int) -> dict[str, torch.Tensor] | None:
    """The weights one GDN value head owns (views into the layer's parameters).

    Value head h reads key head kh = h // r (r = n_v / n_k, `repeat_interleave` as in transformers), as slot
    j = h % r of that key-head group. Conv channels (both layouts) are [q (n_k dk) | k (n_k dk) | v (n_v dv)].
    Qwen3.5 keeps separate in_proj_qkv (same row layout as the conv), in_proj_z, in_proj_a, in_proj_b.
    Qwen3-Next fuses them per key-head group (transformers' `fix_query_key_value_ordering`): in_proj_qkvz rows
    are n_k groups of [q (dk) | k (dk) | v (r dv) | z (r dv)], in_proj_ba rows n_k groups of [b (r) | a (r)].
    """
    dk, dv = gdn.head_k_dim, gdn.head_v_dim
    r = gdn.num_v_heads // gdn.num_k_heads
    kh, j = head // r, head % r
    key_dim = gdn.key_dim
    rows_q = slice(kh * dk, (kh + 1) * dk)
    rows_k = slice(key_dim + kh * dk, key_dim + (kh + 1) * dk)
    rows_v = slice(2 * key_dim + head * dv, 2 * key_dim + (head + 1) * dv)
    conv = gdn.conv1d.weight
    slices = {"conv_q": conv[rows_q], "conv_k": conv[rows_k], "conv_v": conv[rows_v]}
    if hasattr(gdn, "in_proj_qkv"):
        w = gdn.in_proj_qkv.weight
        slices.update({
            "in_proj_q": w[rows_q], "in_proj_k": w[rows_k], "in_proj_v": w[rows_v],
            "in_proj_z": gdn.in_proj_z.weight[head * dv:(head + 1) * dv],
            "in_proj_a": gdn.in_proj_a.weight[head:head + 1],
            "in_proj_b": gdn.in_proj_b.weight[head:head + 1],
        })
    elif hasattr(gdn, "in_proj_qkvz"):
        w = gdn.in_proj_qkvz.weight
        group = kh * (2 * dk + 2 * r * dv)
        v0 = group + 2 * dk + j * dv
        z0 = group + 2 * dk + r * dv + j * dv
        ba = gdn.in_proj_ba.weight
        slices.update({
            "in_proj_q": w[group:group + dk], "in_proj_k": w[group + dk:group + 2 * dk],
            "in_proj_v": w[v0:v0 + dv], "in_proj_z": w[z0:z0 + dv],
            "in_proj_b": ba[kh * 2 * r + j:kh * 2 * r + j + 1],
            "in_proj_a": ba[kh * 2 * r + r + j:kh * 2 * r + r + j + 1],
        })
    else:
        return None
    slices["out_proj"] = gdn.out_proj.weight[:, head * dv:(head + 1) * dv]
    slices["A_log"] = gdn.A_log[head:head + 1]
    slices["dt_bias"] = gdn.dt_bias[head:head + 1]
    return slices



def head_weights(hf_model, heads: list[HeadInfo]) -> dict[str, dict[str, torch.Tensor]]:
    layers = _layers(hf_model)
    out = {}
    for h in heads:
        layer = layers[h.layer]
        if h.kind == "attention":
            sl = attention_head_slices(_attention_module(layer), h.head)
        else:
            sl = gdn_head_slices(_unwrap(layer.linear_attn), h.head)
        if sl is not None:
            out[h.name] = {k: v.detach().float().cpu().clone() for k, v in sl.items()}
    return out
