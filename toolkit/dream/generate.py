"""Moved to the text floor (toolkit/text/generate.py): monitor, serve, evaluation and analysis generate too.
Kept so `from toolkit.dream.generate import ...` in user scripts still works."""

from toolkit.text.generate import (  # noqa: F401
    GumbelSampler, chat_prompt, eos_token_ids, generate, generate_ids, sample, sample_ids)
