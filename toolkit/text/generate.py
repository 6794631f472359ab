"""Batched generation for every component (dream loop, monitor audits, eval, steering, the server):
left-padded batches with the KV cache, deterministic under a seed.

Left padding on the hybrid (Gated DeltaNet + full attention) cache is handled by transformers 5 itself,
so plain left-padded batches are used: the model builds a 2-D padding mask for the linear-attention
layers (`create_recurrent_attention_mask`) and each GDN layer multiplies the pad positions' hidden states
by zero before its projections (`apply_mask_to_padding_states`). Qwen3.5's GDN projections and conv have
no bias, so pads feed the causal conv the same zeros its own left padding would and give the delta rule a
zero key and value: the recurrent state is still zero when the first real token arrives. Full attention
masks the pads and takes positions from the mask; single-token decode steps carry no padding. The result
equals one-prompt-at-a-time generation up to float rounding (pads shift the delta rule's 64-token
chunks), and tests/test_generate.py checks greedy token ids are identical. Without that masking the pad
embedding leaks into the GDN state and batched outputs differ.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from toolkit.chat import chat_prompt, encode_prompt
from toolkit.text.padding import pad_id, pad_rows

__all__ = ["chat_prompt", "eos_token_ids", "generate", "generate_ids", "generation_config", "sample",
           "sample_ids"]  # chat_prompt: from toolkit.chat

CHATML_END = "<|im_end|>"


def generate(model, tokenizer, prompts: list[str], *, temperature: float, max_new_tokens: int, batch_size: int,
             seed: int, min_new_tokens: int = 0) -> list[str]:
    """The new text for each prompt, in input order, ending before the end-of-turn token. temperature <= 0
    is greedy; the same seed gives the same texts and the caller's global RNG is left as it was.
    `min_new_tokens` is for benchmarks (every reply the same length)."""
    eos = eos_token_ids(model, tokenizer)
    new_ids = generate_ids(model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, seed=seed, min_new_tokens=min_new_tokens)
    return [_decode_new(tokenizer, ids, eos) for ids in new_ids]


def generate_ids(model, tokenizer, prompts: list[str], *, temperature: float, max_new_tokens: int, batch_size: int,
                 seed: int, min_new_tokens: int = 0) -> list[list[int]]:
    """`generate`'s new token ids, up to and including the end-of-turn token (no padding after it)."""
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    # Sorting by length keeps prompts of like length together, so batches carry little padding.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    eos = eos_token_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    config = generation_config(temperature, max_new_tokens, eos, pad, min_new_tokens=min_new_tokens)
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model), torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, mask = pad_rows([ids[i] for i in batch], pad, "left", device)
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            for row, i in enumerate(batch):
                results[i] = _until_eos(out[row, input_ids.shape[1]:].tolist(), eos)
    return results


def sample(model, tokenizer, prompts: list[str], *, temperatures: list[float], seeds: list[int], max_new_tokens: int,
           batch_size: int) -> list[str]:
    """Like `generate`, but each prompt has its own temperature (<= 0: greedy) and seed, and the global RNG is
    never used: a row's text depends on its prompt, temperature and seed only, not on the rows batched with it,
    and a background thread can sample while the training thread draws dropout masks from the global RNG."""
    eos = eos_token_ids(model, tokenizer)
    new_ids = sample_ids(model, tokenizer, prompts, temperatures=temperatures, seeds=seeds,
                         max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [_decode_new(tokenizer, ids, eos) for ids in new_ids]


def sample_ids(model, tokenizer, prompts: list[str], *, temperatures: list[float], seeds: list[int],
               max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """`sample`'s new token ids, up to and including the end-of-turn token."""
    from transformers import LogitsProcessorList

    if not len(prompts) == len(temperatures) == len(seeds):
        raise ValueError("sample needs one temperature and one seed per prompt")
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    eos = eos_token_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    config = generation_config(0.0, max_new_tokens, eos, pad)  # argmax over the noised scores
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, mask = pad_rows([ids[i] for i in batch], pad, "left", device)
            noise = GumbelSampler([temperatures[i] for i in batch], [seeds[i] for i in batch], device)
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                 logits_processor=LogitsProcessorList([noise]))
            for row, i in enumerate(batch):
                results[i] = _until_eos(out[row, input_ids.shape[1]:].tolist(), eos)
    return results


class GumbelSampler:
    """Sampling as argmax(logits / T + Gumbel noise) (the Gumbel-max trick: the same distribution as softmax
    sampling at T), with one private generator per row. Rows at T <= 0 get no noise: greedy. Generation stops
    when every row has ended (finished rows ride along as padding until then); each row draws one noise vector
    per step whether finished or not, so its stream does not depend on its neighbours."""

    def __init__(self, temperatures: list[float], seeds: list[int], device):
        self.temperatures = temperatures
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float().clone()
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators)):
            if temperature > 0:
                uniform = torch.rand(scores.shape[1], generator=generator, device=scores.device)
                scores[row] = scores[row] / temperature - torch.log(-torch.log(uniform))
        return scores


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the model's generation eos, the tokenizer's eos and ChatML's <|im_end|>
    (a chat-tuned model ends the assistant turn with it even when its config names only <|endoftext|>)."""
    found = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found += configured if isinstance(configured, list) else [configured]
    found.append(tokenizer.eos_token_id)
    if CHATML_END in tokenizer.get_vocab():
        found.append(tokenizer.convert_tokens_to_ids(CHATML_END))
    return list(dict.fromkeys(i for i in found if i is not None))


def generation_config(temperature: float, max_new_tokens: int, eos: list[int], pad: int, *, top_p: float = 1.0,
                      min_new_tokens: int = 0):
    """Every sampling knob set explicitly: `generate` fills the fields left None from the model's own
    generation_config (e.g. Qwen's top_k=20, top_p=0.95) and then from global defaults (top_k=50)."""
    from transformers import GenerationConfig

    # Greedy ignores the samplers (they only run under do_sample); leaving them out avoids a warning.
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p, min_p=0.0, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0) if temperature > 0 else dict(do_sample=False)
    return GenerationConfig(
        **sampling, repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1, num_return_sequences=1,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=eos, pad_token_id=pad,
        use_cache=True,
    )


def _until_eos(new_ids: list[int], eos: list[int]) -> list[int]:
    """The ids up to the first end-of-turn token, kept; what generate pads the finished rows with is dropped."""
    cut = next((k + 1 for k, t in enumerate(new_ids) if t in eos), len(new_ids))
    return new_ids[:cut]


def _decode_new(tokenizer, new_ids: list[int], eos: list[int]) -> str:
    # Drop the end-of-turn token ourselves: one that is not a special token would survive skip_special_tokens.
    return tokenizer.decode([t for t in new_ids if t not in eos], skip_special_tokens=True)


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


@contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) while generating, then the model's previous mode back."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a caller may have frozen some in eval
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
