"""Limits of the exploration server (toolkit/serve)."""

from __future__ import annotations

from pydantic import Field

from toolkit.config.section import Section


class ServeConfig(Section):
    """Limits of `toolkit serve`'s chat, so one request cannot hold the model for long."""

    max_body_bytes: int = Field(65536, ge=1024)  # larger request bodies get 413
    max_prompt_tokens: int = Field(4096, ge=1)  # longer rendered prompts get 422
    max_new_tokens: int = Field(2048, ge=1)  # larger requests get 422
    generation_timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False)  # a reply is cut here (`stopped: time_limit`)
