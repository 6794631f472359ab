"""The optimizer, schedule, precision and checkpointing of the training loop (toolkit/train)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from toolkit.config.section import Section


class TrainConfig(Section):
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)  # micro-batch per process
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on capable GPUs, fp32 on CPU
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(50, ge=1)
    keep_last: int = Field(3, ge=1)
    eval_every: int = Field(50, ge=1)
    divergence_guard: bool = True

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, v):
        if v == "fp16":
            raise ValueError("fp16 gives NaN in Gated DeltaNet layers; use bf16 (GPU) or fp32 (CPU)")
        return v
