"""Capture what every head does on a probe set, through the transformer-lens bridge.

    model, tokenizer = load_capture_model("runs/my-lora")  # model dir, hub id, adapter dir or run dir
    caps = capture(model, ["Hello there", ...], tokenizer)  # or capture("path/to/model", ...)

Any Hugging Face causal LM: the model is loaded with `toolkit.model.load_model` (for a multimodal checkpoint
such as Qwen3.5's `*ForConditionalGeneration` that is the text model alone, vision tower never loaded), an
adapter is loaded onto it and merged in memory (no copy on disk), and the loaded model is handed to
`TransformerBridge.boot_transformers(hf_model=...)`, so transformer-lens picks the text adapter of that class.

Per prompt (one at a time, no padding, fp32, eval, `run_with_cache(ids, use_cache=False)`):

- full-attention head `L{layer}.H{head}`: the softmax pattern, T x T (`blocks.L.attn.hook_pattern`);
- GDN value head `L{layer}.H{head}` (hybrid models only: Qwen3.5, Qwen3.5-MoE, Qwen3-Next): beta (T,
  `hook_beta`), log decay g (T, `hook_log_decay`: g = -exp(A_log) * softplus(a + dt_bias) <= 0, the per-step
  multiplicative decay is exp(g)), and the implicit attention matrix A (T x T). The gated delta rule is
  linear in V, so running the layer's own `torch_chunk_gated_delta_rule` on the layer's q, k, g, beta (the
  bridge's `hook_q`/`hook_k` are post conv + SiLU; the kernel applies the l2norm with
  `use_qk_l2norm_in_kernel=True`, as transformers does) with V = identity gives A exactly, removal term
  included: core output = A @ V. tests/test_head_diff.py checks A @ V against the unmodified transformers layer.

Weights each head owns (`head_weights`, for the weight-change score): a full-attention head's query rows
(Qwen3.5/Qwen3-Next interleave [query | gate] rows per head), the k/v rows of its kv group and its o_proj
columns; GPT-2's Conv1D keeps weights as [in, out], so there they are the head's q/k/v column blocks of
c_attn and its rows of c_proj. A GDN value head owns its v/z/a/b rows, its out_proj columns, A_log, dt_bias,
and the q/k rows (and conv channels) of its key-head group; Qwen3-Next fuses the projections per key-head
group (`in_proj_qkvz` rows [q | k | v_1..v_r | z_1..z_r] per group, `in_proj_ba` [b_1..b_r | a_1..a_r]).

Counterfactual run (`capture_model(..., swap_in=base_capture.mixers)`): per prompt a second pass with every
token mixer's parameters (attention / GDN module: q/k/v/o, q_norm/k_norm, in_proj_*, conv1d, A_log, dt_bias, ...)
swapped for another model's, and each mixer's input (`blocks.L.attn.hook_in` / `blocks.L.linear_attn.hook_in`)
patched to this model's own: every head as the base computes it on the tuned model's inputs. A head whose own
parameters did not move gives exactly the same pattern as in the plain run, so its change is all propagated.

Memory: each GDN and attention head keeps a T x T float32 matrix per prompt; prompts are cut to
`max_tokens` (default 256) tokens. `reduce(index, item)` shrinks each prompt's item as it is made.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis.heads import (  # noqa: F401 (the heads and their weight slices: callers import them here)
    HeadInfo,
    _attention_module,
    _layers,
    _unwrap,
    attention_head_slices,
    gdn_head_slices,
    head_weights,
    list_heads,
)
from toolkit.errors import ToolkitError
from toolkit.util.jsonl import jsonl_rows
from toolkit.weights import load_weights as load_capture_model  # noqa: F401 (the name analysis callers use)
from toolkit.weights import resolve_weights

DEFAULT_MAX_TOKENS = 256
MERGED_PREFIX = "head-diff-merged-"


# ---------------------------------------------------------------- resolving what to load


def load_for_capture(path_or_run: str | Path, base: str | None = None) -> str:
    """A model directory for tools that need one on disk: a model dir or hub id as is; an adapter merged into
    its base and saved (model + tokenizer) to a new temp dir named with MERGED_PREFIX, which the caller
    removes. The analysis commands do not use it: they load base + adapter in memory (`load_capture_model`)."""
    model_dir, adapter = resolve_weights(path_or_run, base)
    if adapter is None:
        return model_dir
    model, tokenizer = load_capture_model(path_or_run, base)
    out = Path(tempfile.mkdtemp(prefix=MERGED_PREFIX))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


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
    from toolkit.config.checks import probe_row_problem

    rows = []
    for where, row, problem in jsonl_rows(Path(path)):
        problem = problem or probe_row_problem(row)
        if problem:  # a row of the wrong shape is named here, by file:line, not later by the template
            raise ToolkitError(problem, where=where)
        rows.append(row)
    return rows


@dataclass
class ModelCapture:
    heads: list[HeadInfo]
    prompts: list[dict]  # per prompt: {"tokens", "attention": {name: TxT}, "gdn": {name: {beta, log_decay, implicit}}}
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # head name -> slices
    mixers: dict[str, torch.Tensor] | None = None  # `mixer_state`, with capture_model(keep_mixers=True)


# ---------------------------------------------------------------- token mixers: state and swap (at the bridge)


def _bridge_mixers(bridge) -> list[tuple[int, torch.nn.Module]]:
    """(layer, bridge component) of every block's token mixer. Read at the bridge, not the HF module: for some
    layouts (GPT-2's fused c_attn) the bridge keeps its own split q/k/v weights and computes from those."""
    kinds = {h.layer: h.kind for h in list_heads(bridge.original_model.config)}
    return [(i, getattr(bridge.blocks[i], "linear_attn" if kind == "gdn" else "attn"))
            for i, kind in sorted(kinds.items())]


def mixer_state(bridge) -> dict[str, torch.Tensor]:
    """A CPU copy of every token-mixer parameter of a booted bridge, keyed `{layer}.{name}`."""
    return {f"{i}.{name}": p.detach().to("cpu", copy=True)
            for i, module in _bridge_mixers(bridge) for name, p in module.named_parameters()}


@dataclass
class MixerSwap:
    pairs: list[list]  # [parameter, the other model's tensor]: `swapped` exchanges them
    changed_layers: set[int]  # layers whose token mixers differ between the two models


def mixer_swap(bridge, state: dict[str, torch.Tensor]) -> MixerSwap:
    """Pair a booted bridge's token-mixer parameters with the same-named ones of `state` (`mixer_state` of a model
    of the same architecture)."""
    pairs, changed = [], set()
    for i, module in _bridge_mixers(bridge):
        for name, p in module.named_parameters():
            other = state.get(f"{i}.{name}")
            if other is None or other.shape != p.shape:
                raise ValueError(f"layer {i} {name}: the two models' token mixers differ; compare models of one "
                                 "architecture")
            other = other.to(p.device, p.dtype)
            if not torch.equal(other, p.detach()):
                changed.add(i)
            pairs.append([p, other])
    return MixerSwap(pairs, changed)


def _exchange(pairs: list[list]) -> None:
    for pair in pairs:  # pointer swap: no copy, the bridge reads the same Parameter objects
        pair[0].data, pair[1] = pair[1], pair[0].data


@contextmanager
def swapped(swap: MixerSwap):
    """Run with the other model's token-mixer parameters in place; restored on exit."""
    _exchange(swap.pairs)
    try:
        yield
    finally:
        _exchange(swap.pairs)


# ---------------------------------------------------------------- the GDN implicit attention matrix


def _delta_rule_fn(hf_model):
    """The chunked gated-delta-rule function the model's own modeling file uses (with its kernel fallback),
    found through its first GDN layer; None for a model without GDN layers."""
    for layer in _layers(hf_model):
        gdn = getattr(layer, "linear_attn", None)
        if gdn is not None:
            fn = getattr(sys.modules[type(_unwrap(gdn)).__module__], "torch_chunk_gated_delta_rule", None)
            if fn is None:
                raise ValueError(f"{type(_unwrap(gdn)).__name__}: its modeling file has no "
                                 "torch_chunk_gated_delta_rule")
            return fn
    return None


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


def boot_bridge(model, device: str = "cpu", tokenizer=None, base: str | None = None):
    """The transformer-lens bridge around `model`: a loaded HF causal LM, or anything `load_capture_model` takes
    (a model dir, hub id, adapter dir or run dir). The loaded model is handed over as `hf_model`, so
    transformer-lens never loads a checkpoint itself (it would pick the multimodal adapter of a multimodal
    checkpoint and need torchvision); the bridge swaps its components into that model in place."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_capture_model(model, base, device=device)
        tokenizer = tokenizer or loaded_tokenizer
    name = str(getattr(model, "name_or_path", "") or "model")
    kwargs = {"tokenizer": copy.deepcopy(tokenizer)} if tokenizer is not None else {}  # the bridge edits it
    bridge = TransformerBridge.boot_transformers(name, hf_model=model, device=device, dtype=torch.float32, **kwargs)
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


def _input_hook_names(heads: list[HeadInfo]) -> set[str]:
    """Each token mixer's input: what the counterfactual run patches."""
    return {f"blocks.{h.layer}.{'attn' if h.kind == 'attention' else 'linear_attn'}.hook_in" for h in heads}


def encode(text: str, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    from toolkit.chat import encode_prompt  # one BOS rule: a template that writes BOS gets no second one

    ids = torch.tensor([encode_prompt(tokenizer, text)[:max_tokens]], dtype=torch.long)
    if ids.shape[1] == 0:
        raise ValueError("a probe prompt tokenizes to nothing")
    return ids


def _collect(cache, heads: list[HeadInfo], delta_rule) -> dict:
    """{"attention": {head: T x T pattern}, "gdn": {head: {beta, log_decay, implicit}}} from hook values."""
    item = {"attention": {}, "gdn": {}}
    kinds = {h.layer: h.kind for h in heads}
    for layer in sorted(kinds):
        if kinds[layer] == "attention":
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
                                             "log_decay": g[0, :, h].cpu().clone(), "implicit": A[h].clone()}
    return item


def _counterfactual(bridge, ids, cache, item: dict, heads: list[HeadInfo], delta_rule, swap: MixerSwap) -> dict:
    """Every head with the swapped-in parameters on this model's own mixer inputs (read from `cache`, patched in).
    Layers whose mixers are the same in both models compute exactly what they did: their values are reused."""
    heads = [h for h in heads if h.layer in swap.changed_layers]
    out = {"attention": dict(item["attention"]), "gdn": dict(item["gdn"])}
    if not heads:
        return out
    inputs = {n: cache[n] for n in _input_hook_names(heads)}
    store = {}
    hooks = [(n, lambda t, hook, n=n: inputs[n]) for n in inputs]
    hooks += [(n, lambda t, hook, n=n: store.__setitem__(n, t.detach())) for n in _hook_names(heads)]
    with swapped(swap):
        bridge.run_with_hooks(ids, use_cache=False, fwd_hooks=hooks)
    changed = _collect(store, heads, delta_rule)
    out["attention"].update(changed["attention"])
    out["gdn"].update(changed["gdn"])
    return out


def capture_bridge(bridge, prompts, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS, keep_raw: bool = False,
                   swap: MixerSwap | None = None, reduce=None) -> list[dict]:
    """Per prompt: tokens, per-attention-head patterns, per-GDN-head beta/log_decay/implicit matrix.

    `prompts`: strings or probe rows (dicts, see `prompt_text`). `keep_raw` also keeps the raw GDN hooks per
    layer (`gdn_raw`: q, k, v, beta, log_decay, recurrence_out, gate_input) for checks. `swap` (a
    `mixer_swap`) adds `counterfactual`: the same per-head values from the swapped-in parameters on this model's
    own mixer inputs. `reduce(index, item)` replaces each item as it is made.
    """
    hf = bridge.original_model
    heads = list_heads(hf.config)
    names = _hook_names(heads)
    inputs = _input_hook_names([h for h in heads if h.layer in swap.changed_layers]) if swap is not None else set()
    delta_rule = _delta_rule_fn(hf)
    device = next(hf.parameters()).device
    out = []
    for index, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else prompt_text(prompt, tokenizer)
        ids = encode(text, tokenizer, max_tokens).to(device)
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, use_cache=False, names_filter=lambda n: n in names or n in inputs)
            item = {"tokens": ids[0].tolist(), **_collect(cache, heads, delta_rule)}
            if keep_raw:
                item["gdn_raw"] = {
                    layer: {n: cache[f"blocks.{layer}.linear_attn.hook_{n}"].float().cpu()
                            for n in ("q", "k", "v", "beta", "log_decay", "recurrence_out", "gate_input")}
                    for layer in sorted({h.layer for h in heads if h.kind == "gdn"})}
            if swap is not None:
                item["counterfactual"] = _counterfactual(bridge, ids, cache, item, heads, delta_rule, swap)
        out.append(reduce(index, item) if reduce else item)
    return out


def capture_model(model, prompts, tokenizer=None, max_tokens: int = DEFAULT_MAX_TOKENS,
                  device: str | None = None, base: str | None = None, swap_in: dict | None = None,
                  reduce=None, keep_mixers: bool = False) -> ModelCapture:
    """Capture every prompt and keep each head's weight slices. `model`: a loaded HF causal LM, or a model dir,
    hub id, adapter dir or run dir (loaded with `load_capture_model`, adapter merged in memory, `base` the
    adapter's base); a model loaded here is freed afterwards. The tokenizer defaults to the model's own.
    `swap_in` (another model's `mixer_state`) adds the counterfactual run; `reduce`: see `capture_bridge`;
    `keep_mixers` keeps this model's `mixer_state` (to swap into another)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_capture_model(model, base, device=device)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        raise ValueError("capture_model needs a tokenizer with a loaded model")
    heads = list_heads(model.config)
    weights = head_weights(model, heads)
    bridge = boot_bridge(model, device=device, tokenizer=tokenizer)
    swap = mixer_swap(bridge, swap_in) if swap_in is not None else None
    result = ModelCapture(heads=heads, weights=weights, mixers=mixer_state(bridge) if keep_mixers else None,
                          prompts=capture_bridge(bridge, prompts, tokenizer, max_tokens, swap=swap, reduce=reduce))
    del bridge, model, swap
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def capture(model, prompts, tokenizer=None, max_tokens: int = DEFAULT_MAX_TOKENS,
            device: str | None = None) -> list[dict]:
    """Per-prompt dicts: {"tokens", "attention": {head: T x T pattern},
    "gdn": {head: {"beta": T, "log_decay": T, "implicit": T x T}}}."""
    return capture_model(model, prompts, tokenizer, max_tokens, device).prompts
