"""Moved to the bottom floor (toolkit/util/background.py): dream cycles and monitor audits both run there.
Kept so `from toolkit.dream.background import ...` still works."""

from toolkit.util.background import Background, Pending, frozen_copy, join_step  # noqa: F401
