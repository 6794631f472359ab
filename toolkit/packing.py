"""Packed sequences through Gated DeltaNet layers: fresh conv and recurrent state for every example.

A packed row (several examples back to back, `cu_seq_lens_q` marking where each starts) reaches each GDN
module's forward in its **kwargs. transformers' torch fallback cannot keep the examples apart: its causal
conv1d would mix the last tokens of one example into the next, and its chunked delta rule refuses
`cu_seqlens` with a ValueError. `enable_packed_sequences(model)` wraps each GDN module's forward so that,
on that path, it runs once per example and the outputs are concatenated: exact, and the only cost is a
Python loop over the examples of a row.

With flash-linear-attention and causal-conv1d installed and the tensors on a GPU, transformers' own varlen
path runs instead (cu_seqlens reaches the fla kernel; we add `seq_idx` so the causal-conv1d kernel restarts
at each boundary). That GPU path is untested here; `toolkit.data.batching.packing_check` measures whichever
path runs, so a wrong one is refused rather than trained on.
"""

from __future__ import annotations

import itertools
import types

import torch

PACKING_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
CACHE_KEYS = ("cache", "cache_params", "past_key_values")


def gdn_modules(model) -> list[torch.nn.Module]:
    """Every Gated DeltaNet module (Qwen3.5, Qwen3-Next, their MoE variants, ...), found by what it holds
    rather than by class name, so new model classes and peft-wrapped models are covered alike."""
    return [m for m in model.modules() if hasattr(m, "A_log") and hasattr(m, "dt_bias")
            and isinstance(getattr(m, "conv1d", None), torch.nn.Module)]


def enable_packed_sequences(model) -> int:
    """Wrap every GDN module's forward (idempotent: a wrapped module is left alone). Returns how many GDN
    modules the model has. Call it after loading; peft's LoRA layers and gradient checkpointing wrap
    other modules, so they leave this wrapper in place."""
    modules = gdn_modules(model)
    for module in modules:
        if "_unpacked_forward" not in module.__dict__:
            module._unpacked_forward = module.forward  # whatever ran before (accelerate hooks included)
            # a bound method, not a closure: deepcopy of the model then rebinds it to the copy
            module.forward = types.MethodType(_packed_forward, module)
    return len(modules)


def disable_packed_sequences(model) -> None:
    """Undo `enable_packed_sequences` (tests use it to show what leaks without it)."""
    for module in gdn_modules(model):
        inner = module.__dict__.pop("_unpacked_forward", None)
        if inner is None:
            continue
        if getattr(inner, "__func__", None) is type(module).forward:
            del module.forward  # back to the class's own forward
        else:
            module.forward = inner


def fast_gdn_kernels(hidden_states: torch.Tensor) -> bool:
    """True when transformers runs the fla and causal-conv1d kernels, whose varlen path keeps sequences apart."""
    from transformers.utils.import_utils import is_causal_conv1d_available, is_flash_linear_attention_available

    return hidden_states.is_cuda and is_flash_linear_attention_available() and is_causal_conv1d_available()


def _packed_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        return self._unpacked_forward(hidden_states, *args, **kwargs)
    if fast_gdn_kernels(hidden_states):
        kwargs.setdefault("seq_idx", _seq_idx(cu_seqlens, hidden_states))
        return self._unpacked_forward(hidden_states, *args, **kwargs)
    if args or any(kwargs.get(k) is not None for k in CACHE_KEYS):
        raise ValueError("packed sequences (cu_seq_lens_q) cannot be combined with a cache")
    return _per_segment(self._unpacked_forward, hidden_states, cu_seqlens, kwargs)


def _per_segment(forward, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Run `forward` once per example; cu_seqlens index the flattened batch x time tokens (flash-attn layout)."""
    bounds = [int(b) for b in cu_seqlens.tolist()]
    flat = hidden_states.reshape(1, -1, hidden_states.shape[-1])
    if bounds[0] != 0 or bounds[-1] != flat.shape[1]:
        raise ValueError(f"cu_seq_lens_q {bounds} does not cover the {flat.shape[1]} packed tokens")
    mask = kwargs.pop("attention_mask", None)
    mask = None if mask is None else mask.reshape(1, -1)
    rest = {k: v for k, v in kwargs.items() if k not in PACKING_KEYS}
    outs = [forward(flat[:, s:e], attention_mask=None if mask is None else mask[:, s:e], **rest)
            for s, e in itertools.pairwise(bounds) if e > s]
    out = torch.cat(outs, dim=1)
    return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def _seq_idx(cu_seqlens: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """Which example each token belongs to, [batch, time] int32, as causal-conv1d's `seq_idx` wants it."""
    tokens = torch.arange(hidden_states.shape[0] * hidden_states.shape[1], device=hidden_states.device)
    idx = torch.searchsorted(cu_seqlens[1:].to(tokens.device, torch.long), tokens, right=True)
    return idx.to(torch.int32).reshape(hidden_states.shape[:2])
