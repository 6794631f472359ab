"""Tiny random-init models in the layouts the hub ships, one per family, saved like a hub checkpoint.

    path = build_family("qwen3_5", tmp_dir)      # config.json + model.safetensors + tokenizer files

| family        | config.json architectures            | text weights under         | template family |
|---------------|--------------------------------------|----------------------------|-----------------|
| qwen3_5       | Qwen3_5ForConditionalGeneration      | model.language_model.*     | qwen3_5         |
| qwen3_5_moe   | Qwen3_5MoeForConditionalGeneration   | model.language_model.*     | qwen3_5         |
| qwen3_next    | Qwen3NextForCausalLM                 | model.*                    | qwen3           |
| llama         | LlamaForCausalLM                     | model.*                    | llama3          |
| gpt2          | GPT2LMHeadModel                      | transformer.*              | none            |

The multimodal ones carry a (tiny) vision tower and `text_config`/`vision_config` like the real checkpoints;
qwen3_5 ties its embeddings at the top level only (as the small Qwen3.5 checkpoints do), so loading the
text model alone must tie them itself. Tokenizers come from tests/family_templates.py (trained locally,
with each family's special tokens and a template written to reproduce the family's structure).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FAMILIES = ("qwen3_5", "qwen3_5_moe", "qwen3_next", "llama", "gpt2")
TEMPLATE_FAMILY = {"qwen3_5": "qwen3_5", "qwen3_5_moe": "qwen3_5", "qwen3_next": "qwen3", "llama": "llama3",
                   "gpt2": "gpt2"}
HYBRID = {"qwen3_5", "qwen3_5_moe", "qwen3_next"}
MULTIMODAL = {"qwen3_5", "qwen3_5_moe"}

_LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
_GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            linear_conv_kernel_dim=4)
_ATTN = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=512)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
_VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
               spatial_merge_size=2, temporal_patch_size=2)


def _special_ids(tokenizer) -> dict:
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)


def family_config(family: str, tokenizer):
    """The hub-shaped config of `family` for a tokenizer's vocabulary."""
    import transformers as tf

    vocab = len(tokenizer)
    ids = _special_ids(tokenizer)
    if family == "qwen3_5":
        text = dict(vocab_size=vocab, intermediate_size=128, layer_types=_LAYERS, tie_word_embeddings=True, **_ATTN,
                    **_GDN, **ids)
        return tf.Qwen3_5Config(text_config=text, vision_config=_VISION, tie_word_embeddings=True)
    if family == "qwen3_5_moe":
        text = dict(vocab_size=vocab, layer_types=_LAYERS, tie_word_embeddings=False, **_ATTN, **_GDN, **_MOE, **ids)
        return tf.Qwen3_5MoeConfig(text_config=text, vision_config=_VISION, tie_word_embeddings=False)
    if family == "qwen3_next":
        return tf.Qwen3NextConfig(vocab_size=vocab, intermediate_size=64, layer_types=_LAYERS, decoder_sparse_step=1,
                                  tie_word_embeddings=False, **_ATTN, **_GDN, **_MOE, **ids)
    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab, intermediate_size=128, tie_word_embeddings=True, **_ATTN, **ids)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=512,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    raise ValueError(f"unknown family {family}")


def family_model_class(family: str):
    import transformers as tf

    return {"qwen3_5": tf.Qwen3_5ForConditionalGeneration, "qwen3_5_moe": tf.Qwen3_5MoeForConditionalGeneration,
            "qwen3_next": tf.Qwen3NextForCausalLM, "llama": tf.LlamaForCausalLM, "gpt2": tf.GPT2LMHeadModel}[family]


def build_family(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random-init `family` checkpoint with its tokenizer to `out_dir` (once; reused if present)."""
    from family_templates import build_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = build_tokenizer(TEMPLATE_FAMILY[family])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = family_model_class(family)(family_config(family, tokenizer))
    _scramble_gates(model)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def _scramble_gates(model) -> None:
    """Random init leaves every GDN head alike in A_log/dt_bias; give each its own values (as trained ones have)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
