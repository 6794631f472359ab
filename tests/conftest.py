"""Shared fixtures: a tiny-hybrid model directory built once per test session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the CLI runs tests start share 2 cores with pytest itself: one thread each avoids oversubscription
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Tokenized sources are cached in a directory of this session, not the user's ~/.cache."""
    os.environ["TOOLKIT_CACHE"] = str(tmp_path_factory.mktemp("toolkit-cache"))

SAMPLE_TEXTS = [
    f"Line {i}: the quick brown fox jumps over the lazy dog while the cat sleeps. "
    f"User asked for item {i % 7}; the assistant answered with care and did what was asked."
    for i in range(400)
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny-hybrid (Qwen3_5ForCausalLM, 3 GDN + 1 full-attention layer) with its tokenizer."""
    from toolkit.model import build_tiny_hybrid
    from toolkit.recipe import TinyHybridConfig

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_hybrid(TinyHybridConfig(vocab_size=512), iter(SAMPLE_TEXTS), out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir):
    from toolkit.model import load_model, load_tokenizer
    from toolkit.recipe import ModelConfig

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    return load_model(str(tiny_model_dir), cfg), load_tokenizer(str(tiny_model_dir), cfg)
