"""Moved to the text floor (toolkit/text/repetition.py): the curriculum's repetition guard uses it too.
Kept so `from toolkit.monitor.repetition import ...` still works."""

from toolkit.text.repetition import distinct_n, longest_repeat_run, repeat_run, seq_rep_n, words  # noqa: F401
