"""`toolkit estimate RECIPE`: parameters and memory per GPU of a run, from the recipe alone (no weights load).

The model is built on the meta device from its config (a Qwen3.5 checkpoint's `text_config`, as `load_model`
builds it) and LoRA is attached as training attaches it, so the parameter counts are those of the real run,
exactly. Memory then follows from sizes alone. Notation: P_t trainable and P_f frozen parameters (their bytes
b_t, b_f as the run holds them), N GPUs, micro-batch B, sequence T, hidden H, vocabulary V, L decoder layers.

Precision (as toolkit/train/loop.py runs): `train.precision` auto or bf16 is a bf16 GPU run: activations bf16
(a = 2 bytes), a LoRA run's frozen base in bf16, trainable weights in fp32. fp32 (CPUs): everything 4 bytes.

State, bytes per GPU, per engine:
  1 process   weights  P_f·b_f + P_t·4 (+ P_t·2 at bf16: autocast's cached bf16 copy of each trained weight)
              grads    P_t·4                     optimizer  P_t·8 (AdamW m and v, fp32; the fp32 weights are the master)
  FSDP2       (P_f·b_f + P_t·4 + P_t·4 + P_t·8) / N  +  2 gathered decoder blocks at the compute dtype (current + prefetch)
  ZeRO-3      DeepSpeed holds every parameter in the compute dtype and keeps an fp32 master of the trained ones:
              (P_f·c + P_t·(c + 4 master + 4 grads + 8 m, v)) / N + 2 gathered blocks (c = 2 at bf16: 18 bytes/param,
              DeepSpeed's own figure; c = 4 at fp32)
Activations (not sharded: each GPU runs its own micro-batch), bytes = B·T·Σ_layers per_token(layer):
  every layer   norms 2·H·4 (their fp32 input) (+ 2·H·4 when the norm weights train) + their output H·a per reader:
                once, except in a full fine-tune at bf16 (fp32 weights, fp32 residual stream under autocast), where each
                linear reading it keeps its own bf16 copy (q, k, v or the 4 GDN input projections; gate, up)
                + MLP 4·I·a (gate, act, up, product)
  attention     q_proj out 2·nh·hd, q normed/roped/attention out/sigmoid gate/o_proj input 5·nh·hd,
                k/v 4·nkv·hd, all ·a; + 2·nh·4 (softmax logsumexp, norm rstd)   [no q/k norm or gate: Llama-style]
  GDN (linear attention; Kd = nk·dk, Vd = nv·dv, conv = 2·Kd + Vd, chunk C = 64)
                projections 2·conv (conv1d input and output) + Vd (z) + 2·nv, all ·a; gated RMSNorm 5·Vd·4; out_proj Vd·a
                + kernel, fla (GPU; what its ChunkGatedDeltaRuleFunction saves): l2-normed q, k 2·Kd·a + the WY
                  matrix A nv·C·a + beta nv·a + g nv·4 + q/k rstd 2·nk·4 (v is a view of the conv output, counted)
                + kernel, torch fallback (CPU, no fla): fp32, q/k repeated to nv heads:
                  15·nv·dk + 4·nv·C + nv·dk·dv/C (one recurrent state per chunk) + 2·nv·dv
  LoRA          per adapted linear r·a (A's output), and its input again (in·a) when the base is bf16 and the
                adapter fp32 (peft casts the input to fp32; autocast casts it back for the matmul and keeps it)
  checkpointing (train.gradient_checkpointing): L·H·r per token kept at block boundaries + the largest layer
                recomputed (r: the residual stream's bytes, see logits below)
  logits, loss  toolkit/loss.py projects CHUNK_BYTES of fp32 logits at a time: min(B·T, chunk)·V·(3·4 (logits,
                softmax, gradient) + a at bf16 (the head's own output)), plus the embedding output and final norm:
                per token H·r + 2·H·4 (r: the residual stream's bytes, 4 in a full fine-tune at bf16, else a)
Total per GPU = state + activations + logits; GPUs needed = the smallest N whose total fits 90% of the GPU's memory
(the rest: CUDA context, allocator fragmentation). A single process or DDP never shards, so it fits on 1 or not at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from toolkit.errors import ToolkitError
from toolkit.loss import CHUNK_BYTES

GIB = 2**30
USABLE_SHARE = 0.9  # of a GPU's memory; the rest goes to the CUDA context and fragmentation
GDN_CHUNK = 64  # chunk length of fla's and transformers' chunked gated delta rule
MAX_GPUS = 4096
SHOWN_UNFIT = 8  # a sharded row that fits on no number of GPUs shows its state at one 8-GPU node
ENGINES = ("1 process", "FSDP2", "ZeRO-3")


# ---------------------------------------------------------------- the model on the meta device


def meta_model(recipe, command: str = "finetune", weights_dtype: torch.dtype = torch.float32):
    """The run's model, LoRA attached as training attaches it, with every tensor on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from toolkit.model import _causal_lm_config

    config = _model_config(recipe, AutoConfig)
    with torch.device("meta"):  # the adapters too: peft would otherwise initialize them for real
        model = AutoModelForCausalLM.from_config(_causal_lm_config(config), dtype=weights_dtype)
        if command == "finetune" and recipe.lora.enabled:
            from toolkit.lora import attach_lora

            model = attach_lora(model, recipe.lora)
    return model


def _model_config(recipe, auto_config):
    """The config the run would load: a directory or hub id, or tiny-hybrid's (built or not yet built)."""
    from toolkit.model import TINY_HYBRID, resolve_model_path, tiny_hybrid_config

    cfg = recipe.model
    base_dir = recipe.output_dir / "base-model"
    if cfg.name_or_path == TINY_HYBRID and not (base_dir / "config.json").is_file():
        # its tokenizer is trained when the first run starts; the configured vocab_size is its upper bound
        return tiny_hybrid_config(cfg.tiny, _VocabOnly(cfg.tiny.vocab_size))
    path = resolve_model_path(cfg, base_dir, lambda: iter(()), recipe.run.seed)
    try:
        return auto_config.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot read the model config of '{path}': {str(exc).splitlines()[0]}",
                           key="model.name_or_path", hint="a directory with config.json (recipes/models/ has "
                                                          "config-only Qwen3.5 directories for offline estimates)") from None


class _VocabOnly:
    """What tiny_hybrid_config reads from a tokenizer, before the tokenizer exists."""

    def __init__(self, size: int):
        self.size, self.pad_token_id, self.eos_token_id = size, 3, 0

    def __len__(self):
        return self.size

    def convert_tokens_to_ids(self, token):
        return 2


# ---------------------------------------------------------------- parameters


@dataclass
class ParameterCount:
    trainable: int = 0
    frozen: int = 0
    trainable_bytes: int = 0
    frozen_bytes: int = 0
    largest_block: int = 0  # parameters of the largest decoder block (what FSDP2 / ZeRO-3 gather at once)
    adapted: dict = field(default_factory=dict)  # layer kind -> [(in_features, r), ...] of one such layer


def count_parameters(model) -> ParameterCount:
    """Trainable and frozen parameters (shared tensors once, as the optimizer and the checkpoint see them)."""
    count = ParameterCount()
    for _, param in model.named_parameters():
        if param.requires_grad:
            count.trainable += param.numel()
            count.trainable_bytes += param.numel() * param.element_size()
        else:
            count.frozen += param.numel()
            count.frozen_bytes += param.numel() * param.element_size()
    blocks = _decoder_blocks(model)
    count.largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    for block in blocks:
        kind = _block_kind(block)
        if kind not in count.adapted:
            count.adapted[kind] = [(m.in_features, m.r[name]) for m in block.modules()
                                   if hasattr(m, "lora_A") for name in m.lora_A]
    return count


def _decoder_blocks(model):
    from toolkit.layout import decoder_layers_name

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_submodule(decoder_layers_name(base)))


def _block_kind(block) -> str:
    return "gdn" if hasattr(block, "linear_attn") else "attention"


# ---------------------------------------------------------------- activations


@dataclass
class Shape:
    """The sizes the activation formula reads, from the (text) config."""

    hidden: int
    intermediate: int
    vocab: int
    kinds: list  # per layer: "attention" or "gdn"
    heads: int
    kv_heads: int
    head_dim: int
    gated_attention: bool  # Qwen3.5: q_proj also yields an output gate, q/k are normed
    k_heads: int = 0
    v_heads: int = 0
    k_dim: int = 0
    v_dim: int = 0

    @classmethod
    def of(cls, model) -> Shape:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size, intermediate=_intermediate(config), vocab=config.vocab_size,
            kinds=["gdn" if t == "linear_attention" else "attention" for t in types],
            heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            gated_attention=bool(getattr(config, "attn_output_gate", False)),
            k_heads=getattr(config, "linear_num_key_heads", 0) or 0, v_heads=getattr(config, "linear_num_value_heads", 0) or 0,
            k_dim=getattr(config, "linear_key_head_dim", 0) or 0, v_dim=getattr(config, "linear_value_head_dim", 0) or 0,
        )


def _intermediate(config) -> int:
    """The dense MLP width; MoE models: the experts a token runs through (top-k experts + the shared one)."""
    experts = getattr(config, "num_experts_per_tok", 0) or 0
    if experts:
        width = experts * config.moe_intermediate_size
        return width + (getattr(config, "shared_expert_intermediate_size", 0) or 0)
    return getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size


def layer_bytes_per_token(shape: Shape, kind: str, act: int, norms_train: bool, gdn_kernel: str,
                          adapted: list, adapter_cast: bool, fp32_residual: bool = False) -> int:
    """Bytes one decoder layer keeps for backward, per token (the module docstring's formula)."""
    h = shape.hidden
    readers = (3 if kind == "attention" else 4) + 2 if fp32_residual else 2  # of the two norms' outputs
    total = 2 * (h * 4 + (h * 4 if norms_train else 0)) + readers * h * act + 4 * shape.intermediate * act
    if kind == "attention":
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        if shape.gated_attention:
            total += (2 * q + 5 * q + 4 * kv) * act + 2 * shape.heads * 4
        else:
            total += (2 * q + 2 * kv) * act + shape.heads * 4
    else:
        total += _gdn_bytes(shape, act, gdn_kernel)
    total += sum((r + (fan_in if adapter_cast else 0)) * act for fan_in, r in adapted)
    return total


def _gdn_bytes(shape: Shape, act: int, kernel: str) -> int:
    nk, nv, dk, dv, c = shape.k_heads, shape.v_heads, shape.k_dim, shape.v_dim, GDN_CHUNK
    kd, vd = nk * dk, nv * dv
    conv = 2 * kd + vd
    total = (2 * conv + vd + 2 * nv) * act + 5 * vd * 4 + vd * act
    if kernel == "fla":
        return total + 2 * kd * act + nv * c * act + nv * act + nv * 4 + 2 * nk * 4
    return total + (15 * nv * dk + 4 * nv * c + nv * dk * dv // c + 2 * nv * dv) * 4


# ---------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    model: str
    model_class: str
    precision: str
    batch: int
    seq: int
    gpu_memory_gib: float
    gdn_kernel: str
    gradient_checkpointing: bool  # the recipe's setting
    params: dict
    per_token: dict  # layer kind -> activation bytes per token (checkpointing off)
    rows: list  # one per engine x checkpointing: bytes per GPU at the GPUs it needs


def estimate(loaded, command: str = "finetune", gpu_memory_gib: float = 80.0, seq: int | None = None,
             batch: int | None = None, gdn_kernel: str = "fla") -> Estimate:
    recipe = loaded.recipe
    bf16 = recipe.train.precision in ("auto", "bf16")
    lora = command == "finetune" and recipe.lora.enabled
    weights_dtype = torch.bfloat16 if bf16 and lora else torch.float32
    try:
        model = meta_model(recipe, command, weights_dtype)
    except ToolkitError as err:
        raise loaded.place(err) from None
    params = count_parameters(model)
    shape = Shape.of(model)
    act = 2 if bf16 else 4
    batch, seq = batch or recipe.train.batch_size, seq or recipe.data.max_length
    per_token = {kind: layer_bytes_per_token(shape, kind, act, norms_train=not lora, gdn_kernel=gdn_kernel,
                                             adapted=params.adapted.get(kind, []), adapter_cast=bf16 and lora,
                                             fp32_residual=bf16 and not lora)
                 for kind in set(shape.kinds)}
    residual = 4 if bf16 and not lora else act  # fp32 weights under autocast keep an fp32 residual stream
    rows = [_row(engine, ckpt, params, shape, per_token, act, residual, bf16, batch * seq, gpu_memory_gib)
            for engine in ENGINES for ckpt in (False, True)]
    name = recipe.model.name_or_path
    return Estimate(model=name, model_class=type(_base(model)).__name__, precision="bf16" if bf16 else "fp32",
                    batch=batch, seq=seq, gpu_memory_gib=gpu_memory_gib, gdn_kernel=gdn_kernel,
                    gradient_checkpointing=recipe.train.gradient_checkpointing, params=asdict(params),
                    per_token=per_token, rows=rows)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def activation_bytes(shape: Shape, per_token: dict, residual: int, tokens: int, checkpointing: bool) -> int:
    """Bytes the decoder layers keep for backward at `tokens` = B·T (`residual`: the hidden states' bytes)."""
    if checkpointing:
        return tokens * (len(shape.kinds) * shape.hidden * residual + max(per_token.values()))
    return tokens * sum(per_token[kind] for kind in shape.kinds)


def logits_bytes(shape: Shape, act: int, tokens: int, residual: int) -> int:
    """The chunked loss's peak (toolkit/loss.py) plus the embedding output and final norm."""
    chunk = max(1, CHUNK_BYTES // (4 * shape.vocab))
    per_position = shape.vocab * (3 * 4 + (act if act == 2 else 0))
    return min(tokens, chunk) * per_position + tokens * (shape.hidden * residual + 2 * shape.hidden * 4)


def state_bytes(engine: str, params: ParameterCount, bf16: bool, gpus: int) -> dict:
    """Weights, gradients and optimizer state per GPU (the module docstring's table)."""
    t = params.trainable
    compute = 2 if bf16 else 4
    if engine == "1 process":
        return {"weights": params.frozen_bytes + params.trainable_bytes + (2 * t if bf16 else 0),
                "grads": params.trainable_bytes, "optimizer": 8 * t}
    gathered = 2 * params.largest_block * compute
    if engine == "FSDP2":
        return {"weights": (params.frozen_bytes + params.trainable_bytes) / gpus + gathered,
                "grads": params.trainable_bytes / gpus, "optimizer": 8 * t / gpus}
    return {"weights": ((params.frozen + t) * compute) / gpus + gathered,
            "grads": 4 * t / gpus, "optimizer": (8 + 4) * t / gpus}  # ZeRO-3: m, v and the fp32 master


def _row(engine, checkpointing, params, shape, per_token, act, residual, bf16, tokens, gpu_memory_gib) -> dict:
    fixed = {"activations": activation_bytes(shape, per_token, residual, tokens, checkpointing),
             "logits_loss": logits_bytes(shape, act, tokens, residual)}
    usable = gpu_memory_gib * GIB * USABLE_SHARE
    candidates = [1] if engine == "1 process" else range(1, MAX_GPUS + 1)
    gpus = next((n for n in candidates if sum({**state_bytes(engine, params, bf16, n), **fixed}.values()) <= usable),
                None)
    at = gpus or (1 if engine == "1 process" else SHOWN_UNFIT)
    parts = {**state_bytes(engine, params, bf16, at), **fixed}
    return {"engine": engine, "checkpointing": checkpointing, "gpus": gpus, "at_gpus": at,
            **{k: int(v) for k, v in parts.items()},
            "total": int(sum(parts.values()))}


# ---------------------------------------------------------------- output


def estimate_json(result: Estimate) -> str:
    return json.dumps(asdict(result), indent=2)


def render(result: Estimate) -> None:
    """The estimate as two rich tables: parameters, then memory per GPU per engine."""
    from rich.console import Console
    from rich.table import Table

    p = result.params
    console = Console(width=None if Console().is_terminal else 132)  # piped or in a README: no cut columns
    console.print(f"[bold]{result.model}[/] ({result.model_class}), {result.precision}, micro-batch {result.batch} x "
                  f"seq {result.seq}, GDN kernel {result.gdn_kernel}, {result.gpu_memory_gib:g} GiB GPUs")
    console.print(f"parameters: {p['trainable']:,} trainable ({_gib(p['trainable_bytes'])}), {p['frozen']:,} frozen "
                  f"({_gib(p['frozen_bytes'])}); activations per token: "
                  + ", ".join(f"{k} layer {v / 1024:,.1f} KiB" for k, v in sorted(result.per_token.items())))
    table = Table(title="memory per GPU (GiB)")
    for column in ("engine", "checkpointing", "weights", "grads", "optimizer", "activations", "logits+loss",
                   "total", "GPUs needed"):
        table.add_column(column, justify="left" if column in ("engine", "checkpointing") else "right")
    for row in result.rows:
        mark = " (recipe)" if row["checkpointing"] == result.gradient_checkpointing else ""
        needed = str(row["gpus"]) if row["gpus"] else "does not fit" + (
            f" (shown at {row['at_gpus']})" if row["at_gpus"] > 1 else "")
        table.add_row(row["engine"], ("on" if row["checkpointing"] else "off") + mark,
                      *(_gib(row[k], unit=False) for k in ("weights", "grads", "optimizer", "activations",
                                                           "logits_loss", "total")),
                      needed)
    console.print(table)
    console.print("Sharded rows show the state at the GPUs needed. Activations are per GPU (each runs its own "
                  "micro-batch) and are not sharded: where a row does not fit, turn on train.gradient_checkpointing "
                  "or lower --batch / --seq. Formula: toolkit/estimate.py")


def _gib(n: float, unit: bool = True) -> str:
    return f"{n / GIB:,.2f}" + (" GiB" if unit else "")
