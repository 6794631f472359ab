"""Load a causal LM and its tokenizer: any Hugging Face model by path or hub id, or the built-in tiny-hybrid.

tiny-hybrid is a random-init transformers `Qwen3_5ForCausalLM` (Gated DeltaNet and full attention
at 3:1) with a byte-level BPE tokenizer trained on the run's own text. It is saved as an ordinary
model directory and then loaded through the same `from_pretrained` path as any other model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from toolkit.config.model import ModelConfig, TinyHybridConfig
from toolkit.errors import ToolkitError, first_line

TINY_HYBRID = "tiny-hybrid"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML; {% generation %} marks assistant spans so `return_assistant_tokens_mask` finds them.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE trained locally with `tokenizers`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_hybrid_config(cfg: TinyHybridConfig, tokenizer):
    from transformers import Qwen3_5TextConfig

    layer_types = [
        "full_attention" if (i + 1) % cfg.full_attention_interval == 0 else "linear_attention"
        for i in range(cfg.num_layers)
    ]
    return Qwen3_5TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        linear_num_key_heads=cfg.linear_num_key_heads,
        linear_num_value_heads=cfg.linear_num_value_heads,
        linear_key_head_dim=cfg.linear_key_head_dim,
        linear_value_head_dim=cfg.linear_value_head_dim,
        linear_conv_kernel_dim=cfg.linear_conv_kernel_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        layer_types=layer_types,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
    )


def build_tiny_hybrid(cfg: TinyHybridConfig, texts: Iterable[str], out_dir: Path, seed: int) -> Path:
    """Train a tokenizer on `texts`, random-init the model under `seed`, save both to `out_dir` atomically."""
    from transformers import Qwen3_5ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    with torch.random.fork_rng():  # seed the init without moving the caller's RNG (ranks must stay alike)
        torch.manual_seed(seed)
        model = Qwen3_5ForCausalLM(tiny_hybrid_config(cfg, tokenizer))
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_model_path(model_cfg: ModelConfig, base_dir: Path, texts, seed: int) -> str:
    """The directory or hub id to load: tiny-hybrid is built once into `base_dir` and reused."""
    if model_cfg.name_or_path != TINY_HYBRID:
        path = model_cfg.name_or_path
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1  # hub ids are owner/name
        if looks_local and not Path(path).expanduser().is_dir():
            raise ToolkitError(f"model directory not found: {path}", key="model.name_or_path",
                               hint="a local directory, a hub id such as Qwen/Qwen3.5-27B, or tiny-hybrid")
        return str(Path(path).expanduser()) if path.startswith("~") else path
    if not (base_dir / "config.json").is_file():
        build_tiny_hybrid(model_cfg.tiny, texts(), base_dir, seed)
    return str(base_dir)


def load_tokenizer(path: str, model_cfg: ModelConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot load tokenizer from '{path}': {exc}", key="model.name_or_path") from None
    if len(tokenizer) < 2:  # a directory without tokenizer files loads as an empty tokenizer, silently
        raise ToolkitError(f"the tokenizer loaded from {path} has {len(tokenizer)} token(s): the directory has no "
                           "tokenizer files", key="model.name_or_path",
                           hint="copy tokenizer.json / tokenizer_config.json next to config.json")
    if model_cfg.chat_template:
        tokenizer.chat_template = model_cfg.chat_template
        _check_chat_template(tokenizer, model_cfg)
    # read by toolkit.chat.render, so training, dream, serve and analysis render prompts alike
    tokenizer.chat_template_kwargs = dict(getattr(model_cfg, "chat_template_kwargs", None) or {})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_chat_template(tokenizer, model_cfg: ModelConfig) -> None:
    """The recipe's model.chat_template renders a tiny conversation, or the error names that key (not a data line)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **dict(model_cfg.chat_template_kwargs or {}))
    except Exception as exc:  # jinja syntax and runtime errors, templates that raise_exception(...)
        raise ToolkitError(f"the chat template fails on a two-message conversation: {first_line(exc)}",
                           key="model.chat_template") from None
    if not isinstance(text, str):  # whether it writes the content as is is checked per example, at its data line
        raise ToolkitError("the chat template does not render to text", key="model.chat_template")


def load_model(path: str, model_cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """The causal LM at `path`. For a multimodal checkpoint (Qwen3.5 dense and MoE ship as
    `*ForConditionalGeneration` with `text_config`) this is its text model alone (`Qwen3_5ForCausalLM`):
    transformers maps `model.language_model.*` to `model.*` and the vision tower is neither loaded nor needed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    pickled = None if model_cfg.allow_pickle else pickle_only_weights(Path(path))
    if pickled:
        raise ToolkitError(f"'{path}' holds only pickle weights ({pickled})", key="model.name_or_path", hint=PICKLE_HINT)
    common = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    # None: transformers' own choice (safetensors first, then .bin); True: safetensors or nothing (hub ids too)
    safetensors_only = None if model_cfg.allow_pickle else True
    try:
        config = AutoConfig.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(
            path, config=_causal_lm_config(config), dtype=dtype, attn_implementation=model_cfg.attn_implementation,
            use_safetensors=safetensors_only, **common,
        )
    except (OSError, ValueError) as exc:
        hint = PICKLE_HINT if not model_cfg.allow_pickle and "safetensors" in str(exc) else None
        raise ToolkitError(f"cannot load model '{path}': {first_line(exc)}", key="model.name_or_path",
                           hint=hint) from None
    return model


PICKLE_HINT = ("pickle (.bin) weights can run code when loaded: convert them to safetensors, or set "
               "model.allow_pickle: true if you trust the files")
PICKLE_WEIGHTS = ("pytorch_model*.bin", "adapter_model*.bin")  # what from_pretrained would unpickle


def pickle_only_weights(directory: Path) -> str | None:
    """The first pickle weights file of a local directory that has no safetensors, else None."""
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return None
    return next((p.name for pattern in PICKLE_WEIGHTS for p in sorted(directory.glob(pattern))), None)


def _causal_lm_config(config):
    """The config AutoModelForCausalLM should build from. A multimodal checkpoint that ties its embeddings at
    the top level only (small Qwen3.5s) stores no lm_head; the text model built alone must tie them too, or its
    lm_head is left random."""
    text = getattr(config, "text_config", None)
    if text is None or not getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", True):
        return config
    text.tie_word_embeddings = True
    return config


def is_hybrid(model) -> bool:
    """True when the model has Gated DeltaNet (linear-attention) layers."""
    layer_types = getattr(_text_config(model), "layer_types", None) or []
    return "linear_attention" in layer_types


def _text_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config
