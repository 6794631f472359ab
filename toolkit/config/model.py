"""Which model a run loads (a hub id, a local directory or the built-in tiny hybrid) and its LoRA adapter."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from toolkit.config.section import Section


class TinyHybridConfig(Section):
    """Sizes of the built-in random-init Qwen3.5 hybrid (Gated DeltaNet + full attention at 3:1)."""

    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = Field(4, ge=1)
    full_attention_interval: int = Field(4, ge=1)  # every 4th layer is full attention: 3:1
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    max_position_embeddings: int = 2048


class ModelConfig(Section):
    name_or_path: str = "tiny-hybrid"  # "tiny-hybrid", a local directory, or a hub id
    revision: str | None = None
    trust_remote_code: bool = False
    # load pickle weights (pytorch_model.bin, adapter_model.bin) where no safetensors exist: unpickling can run code
    allow_pickle: bool = False
    attn_implementation: str | None = "sdpa"
    tiny: TinyHybridConfig = TinyHybridConfig()
    chat_template: str | None = None  # overrides the tokenizer's template (Jinja text)
    # extra variables for the chat template, used by training and inference alike: {enable_thinking: false}
    chat_template_kwargs: dict[str, Any] = {}


GDN_GATE_PARAMS = ("A_log", "dt_bias")


class LoraConfig(Section):
    enabled: bool = True  # finetune only; `toolkit pretrain` trains every weight
    r: int = Field(64, ge=1)
    alpha: float = 128.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str | list[str] = "hybrid-all"  # preset name or explicit module names
    train_gates: bool = False  # train the GDN gate parameters A_log and dt_bias directly
    rslora: bool = False
    dora: bool = False
    export_merged: bool = False  # also write merged/ (base + adapter as one model)
