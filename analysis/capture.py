"""Capture what every head does on a probe set, through the transformer-lens bridge.

    model_dir = load_for_capture("runs/my-lora")          # model dir, hub id, adapter dir or run dir
    caps = capture(model_dir, ["Hello there", ...], tokenizer)

Per prompt (one at a time, no padding, fp32, eval, `run_with_cache(ids, use_cache=False)`):

- full-attention head `L{layer}.H{head}`: the softmax pattern, T x T (`blocks.L.attn.hook_pattern`);
- GDN value head `L{layer}.H{head}`: beta (T, `hook_beta`), log decay g (T, `hook_log_decay`: g =
  -exp(A_log) * softplus(a + dt_bias) <= 0, the per-step multiplicative decay is exp(g)), and the implicit
  attention matrix A (T x T). The gated delta rule is linear in V, so running the layer's own
  `torch_chunk_gated_delta_rule` on the layer's q, k, g, beta (the bridge's `hook_q`/`hook_k` are post
  conv + SiLU; the kernel applies the l2norm with `use_qk_l2norm_in_kernel=True`, as transformers does) with
  V = identity gives A exactly, removal term included: core output = A @ V. tests/test_head_diff.py checks
  A @ V against the unmodified transformers layer.

Memory: each GDN and attention head keeps a T x T float32 matrix per prompt; prompts are cut to
`max_tokens` (default 256) tokens.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolkit.data.sources import jsonl_rows
from toolkit.errors import ToolkitError

DEFAULT_MAX_TOKENS = 256
MERGED_PREFIX = "head-diff-merged-"


# ---------------------------------------------------------------- resolving what to load


def _read_recipe_model(run_dir: Path) -> str | None:
    recipe = run_dir / "resolved_recipe.yaml"
    if not recipe.is_file():
        return None
    import yaml

    data = yaml.safe_load(recipe.read_text()) or {}
    return ((data.get("model") or {}).get("name_or_path")) or None


def _adapter_base(adapter_dir: Path, run_dir: Path | None) -> str:
    """The base an adapter belongs to: the run's recipe model (RUN/base-model for tiny-hybrid), else
    adapter_config's base_model_name_or_path."""
    if run_dir is not None:
        name = _read_recipe_model(run_dir)
        if name == "tiny-hybrid" and (run_dir / "base-model" / "config.json").is_file():
            return str(run_dir / "base-model")
        if name and name != "tiny-hybrid":
            return name
        if (run_dir / "base-model" / "config.json").is_file():
            return str(run_dir / "base-model")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ToolkitError("adapter_config.json names no base model", where=str(adapter_dir),
                           hint="pass the base model explicitly")
    return base


def _merge_adapter(adapter_dir: Path, base: str, dtype=torch.float32) -> str:
    """Merge a PEFT adapter into a copy of `base` (merge_and_unload); save model + tokenizer to a temp dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(tempfile.mkdtemp(prefix=MERGED_PREFIX))
    merged.save_pretrained(out, safe_serialization=True)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(out)
    return str(out)


def resolve_weights(path_or_run: str | Path, base: str | None = None) -> tuple[str, Path | None]:
    """(model dir or hub id, adapter dir or None) behind a model dir, hub id, full-model run dir (RUN/model),
    PEFT adapter dir or LoRA run dir (RUN/adapter). An adapter's base: `base`, else the run's recipe model
    (RUN/base-model for tiny-hybrid), else adapter_config's base_model_name_or_path."""
    path = Path(str(path_or_run)).expanduser()
    if not path.exists():
        return str(path_or_run), None  # a hub id
    if (path / "adapter_config.json").is_file():
        run_dir = path.parent if (path.parent / "resolved_recipe.yaml").is_file() else None
        return base or _adapter_base(path, run_dir), path
    if (path / "config.json").is_file():
        return str(path), None
    if (path / "adapter" / "adapter_config.json").is_file():
        return base or _adapter_base(path / "adapter", path), path / "adapter"
    if (path / "model" / "config.json").is_file():
        return str(path / "model"), None
    raise ToolkitError("not a model dir, adapter dir or run dir (no config.json, adapter_config.json, adapter/ "
                       "or model/)", where=str(path))


def load_for_capture(path_or_run: str | Path, base: str | None = None) -> str:
    """A local model dir (or hub id) the bridge can boot: an adapter is merged into a copy of its base
    in a temp dir, named with MERGED_PREFIX, which the caller removes."""
    model_dir, adapter = resolve_weights(path_or_run, base)
    return _merge_adapter(adapter, model_dir) if adapter is not None else model_dir


# ---------------------------------------------------------------- prompts


def prompt_text(row: dict, tokenizer) -> str:
    """{"messages": [...]} / {"prompt": ..., "response"?: ...} through the chat template (the plain format
    without one) as toolkit.chat renders them: with the generation prompt, or as a finished conversation when
    the last message is the assistant's; {"text": ...} as is."""
    from toolkit.chat import chat_prompt, render

    messages = row.get("messages")
    if messages is None and "prompt" in row:
        messages = [{"role": "user", "content": row["prompt"]}]
        if row.get("response"):
            messages.append({"role": "assistant", "content": row["response"]})
    if messages:
        if messages[-1].get("role") == "assistant":
            return render(tokenizer, messages, add_generation_prompt=False)
        return chat_prompt(tokenizer, messages)
    if "text" in row:
        return row["text"]
    raise ToolkitError(f"a probe row needs 'messages', 'prompt' or 'text'; it has {sorted(row)}")


def read_prompts(path: str | Path) -> list[dict]:
    rows = []
    for where, row, problem in jsonl_rows(Path(path)):
        if problem:
            raise ToolkitError(problem, where=where)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- heads and weights


@dataclass
class HeadInfo:
    name: str  # L{layer}.H{head}
    kind: str  # "attention" | "gdn"
    layer: int
    head: int


@dataclass
class ModelCapture:
    heads: list[HeadInfo]
    prompts: list[dict]  # per prompt: {"tokens", "attention": {name: TxT}, "gdn": {name: {beta, log_decay, implicit}}}
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # head name -> slices


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _unwrap(module):
    """The transformers module behind a bridge component (the bridge swaps components into the model)."""
    return getattr(module, "original_component", None) or module


def _layers(hf_model):
    inner = getattr(hf_model, "model", hf_model)
    inner = getattr(inner, "language_model", inner)
    return inner.layers


def list_heads(config) -> list[HeadInfo]:
    cfg = _text_config(config)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    heads = []
    for layer, kind in enumerate(types):
        if kind == "linear_attention":
            heads += [HeadInfo(f"L{layer}.H{h}", "gdn", layer, h) for h in range(cfg.linear_num_value_heads)]
        else:
            heads += [HeadInfo(f"L{layer}.H{h}", "attention", layer, h) for h in range(cfg.num_attention_heads)]
    return heads


def attention_head_slices(attn, head: int) -> dict[str, torch.Tensor] | None:
    """The weights one full-attention head owns: q_proj rows (Qwen3.5 interleaves [query | gate] per head:
    rows head*2d .. (head+1)*2d, not the first/second half), k/v rows of its kv group, o_proj columns."""
    n_heads = attn.config.num_attention_heads
    n_kv = attn.config.num_key_value_heads
    d = attn.head_dim
    q = attn.q_proj.weight
    if q.shape[0] == n_heads * d * 2:  # Qwen3.5 / Qwen3-Next: per head [query rows, gate rows]
        q_rows = q[head * 2 * d:(head + 1) * 2 * d]
    elif q.shape[0] == n_heads * d:
        q_rows = q[head * d:(head + 1) * d]
    else:
        return None
    g = head // (n_heads // n_kv)
    return {
        "q_proj": q_rows,
        "k_proj": attn.k_proj.weight[g * d:(g + 1) * d],
        "v_proj": attn.v_proj.weight[g * d:(g + 1) * d],
        "o_proj": attn.o_proj.weight[:, head * d:(head + 1) * d],
    }


def gdn_head_slices(gdn, head: int) -> dict[str, torch.Tensor] | None:
    """The weights one GDN value head owns (Qwen3.5 split layout; None for Qwen3-Next's fused in_proj_qkvz)."""
    if not hasattr(gdn, "in_proj_qkv"):
        slices = {}
    else:
        dk, dv = gdn.head_k_dim, gdn.head_v_dim
        kh = head // (gdn.num_v_heads // gdn.num_k_heads)
        key_dim = gdn.key_dim
        rows_q = slice(kh * dk, (kh + 1) * dk)
        rows_k = slice(key_dim + kh * dk, key_dim + (kh + 1) * dk)
        rows_v = slice(2 * key_dim + head * dv, 2 * key_dim + (head + 1) * dv)
        w = gdn.in_proj_qkv.weight
        conv = gdn.conv1d.weight
        slices = {
            "in_proj_q": w[rows_q], "in_proj_k": w[rows_k], "in_proj_v": w[rows_v],
            "conv_q": conv[rows_q], "conv_k": conv[rows_k], "conv_v": conv[rows_v],
            "in_proj_z": gdn.in_proj_z.weight[head * dv:(head + 1) * dv],
            "in_proj_a": gdn.in_proj_a.weight[head:head + 1],
            "in_proj_b": gdn.in_proj_b.weight[head:head + 1],
            "out_proj": gdn.out_proj.weight[:, head * dv:(head + 1) * dv],
        }
    slices["A_log"] = gdn.A_log[head:head + 1]
    slices["dt_bias"] = gdn.dt_bias[head:head + 1]
    return slices


def head_weights(hf_model, heads: list[HeadInfo]) -> dict[str, dict[str, torch.Tensor]]:
    layers = _layers(hf_model)
    out = {}
    for h in heads:
        layer = layers[h.layer]
        if h.kind == "attention":
            sl = attention_head_slices(_unwrap(layer.self_attn), h.head)
        else:
            sl = gdn_head_slices(_unwrap(layer.linear_attn), h.head)
        if sl is not None:
            out[h.name] = {k: v.detach().float().cpu().clone() for k, v in sl.items()}
    return out


# ---------------------------------------------------------------- the GDN implicit attention matrix


def _delta_rule_fn(hf_model):
    """The chunked gated-delta-rule function the model's own modeling file uses (with its kernel fallback)."""
    module = sys.modules[type(hf_model).__module__]
    return getattr(module, "torch_chunk_gated_delta_rule")


def implicit_attention(q, k, g, beta, delta_rule) -> torch.Tensor:
    """A with core_out = A @ V for every value head: [n_v_heads, T, T].

    q, k: [1, T, n_k_heads, dk] post conv + SiLU, before l2norm (the kernel normalizes); g, beta: [1, T, n_v].
    Runs the exact gated delta rule (decay, removal and write) with V = I_T: row i of the output is A[i, :].
    """
    T, n_v = g.shape[1], g.shape[2]
    q, k = q.float(), k.float()
    if q.shape[2] != n_v:
        q = q.repeat_interleave(n_v // q.shape[2], dim=2)
        k = k.repeat_interleave(n_v // k.shape[2], dim=2)
    eye = torch.eye(T, dtype=torch.float32, device=q.device)[None, :, None, :].expand(1, T, n_v, T).contiguous()
    out, _ = delta_rule(q, k, eye, g=g.float(), beta=beta.float(), initial_state=None,
                        output_final_state=False, use_qk_l2norm_in_kernel=True)
    return out[0].permute(1, 0, 2).contiguous()  # [n_v, T(query i), T(source j)]


# ---------------------------------------------------------------- capture


def boot_bridge(model_dir: str, device: str = "cpu"):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(model_dir), device=device, dtype=torch.float32)
    bridge.eval()
    return bridge


def _hook_names(heads: list[HeadInfo]) -> set[str]:
    names = set()
    for layer in {h.layer for h in heads if h.kind == "attention"}:
        names.add(f"blocks.{layer}.attn.hook_pattern")
    for layer in {h.layer for h in heads if h.kind == "gdn"}:
        for hook in ("hook_q", "hook_k", "hook_v", "hook_beta", "hook_log_decay", "hook_recurrence_out",
                     "hook_gate_input"):
            names.add(f"blocks.{layer}.linear_attn.{hook}")
    return names


def encode(text: str, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    from toolkit.chat import encode_prompt  # one BOS rule: a template that writes BOS gets no second one

    ids = torch.tensor([encode_prompt(tokenizer, text)[:max_tokens]], dtype=torch.long)
    if ids.shape[1] == 0:
        raise ValueError("a probe prompt tokenizes to nothing")
    return ids


def capture_bridge(bridge, prompts, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS,
                   keep_raw: bool = False) -> list[dict]:
    """Per prompt: tokens, per-attention-head patterns, per-GDN-head beta/log_decay/implicit matrix.

    `prompts`: strings or probe rows (dicts, see `prompt_text`). `keep_raw` also keeps the raw GDN hooks per
    layer (`gdn_raw`: q, k, v, beta, log_decay, recurrence_out, gate_input) for checks.
    """
    hf = bridge.original_model
    heads = list_heads(hf.config)
    names = _hook_names(heads)
    delta_rule = _delta_rule_fn(hf)
    device = next(hf.parameters()).device
    out = []
    for prompt in prompts:
        text = prompt if isinstance(prompt, str) else prompt_text(prompt, tokenizer)
        ids = encode(text, tokenizer, max_tokens).to(device)
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, use_cache=False, names_filter=lambda n: n in names)
            item = {"tokens": ids[0].tolist(), "attention": {}, "gdn": {}}
            if keep_raw:
                item["gdn_raw"] = {}
            for layer in sorted({h.layer for h in heads}):
                if f"blocks.{layer}.attn.hook_pattern" in names:
                    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].float().cpu()  # [heads, T, T]
                    for h in range(pattern.shape[0]):
                        item["attention"][f"L{layer}.H{h}"] = pattern[h].clone()
                    continue
                p = f"blocks.{layer}.linear_attn"
                q, k = cache[f"{p}.hook_q"], cache[f"{p}.hook_k"]
                beta, g = cache[f"{p}.hook_beta"].float(), cache[f"{p}.hook_log_decay"].float()
                A = implicit_attention(q, k, g, beta, delta_rule).cpu()
                for h in range(A.shape[0]):
                    item["gdn"][f"L{layer}.H{h}"] = {"beta": beta[0, :, h].cpu().clone(),
                                                     "log_decay": g[0, :, h].cpu().clone(),
                                                     "implicit": A[h].clone()}
                if keep_raw:
                    item["gdn_raw"][layer] = {n: cache[f"{p}.hook_{n}"].float().cpu() for n in
                                              ("q", "k", "v", "beta", "log_decay", "recurrence_out", "gate_input")}
        out.append(item)
    return out


def capture_model(model_dir: str, prompts, tokenizer=None, max_tokens: int = DEFAULT_MAX_TOKENS,
                  device: str | None = None) -> ModelCapture:
    """Boot the bridge on `model_dir`, capture every prompt, keep each head's weight slices; free the model."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bridge = boot_bridge(model_dir, device=device)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    heads = list_heads(bridge.original_model.config)
    result = ModelCapture(heads=heads, prompts=capture_bridge(bridge, prompts, tokenizer, max_tokens),
                          weights=head_weights(bridge.original_model, heads))
    del bridge
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def capture(model_dir: str, prompts, tokenizer=None, max_tokens: int = DEFAULT_MAX_TOKENS,
            device: str | None = None) -> list[dict]:
    """Per-prompt dicts: {"tokens", "attention": {head: T x T pattern},
    "gdn": {head: {"beta": T, "log_decay": T, "implicit": T x T}}}."""
    return capture_model(model_dir, prompts, tokenizer, max_tokens, device).prompts
