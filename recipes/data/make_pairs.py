"""Write directive-pairs.jsonl (and the held-out directive-pairs-eval.jsonl): contrast pairs for steering and probes from the tier 1-2 directive data.

Each row is {"prompt": the user's directive, "positive": the reply that acknowledges and follows it
(from the dataset), "negative": a reply that proposes an alternative instead}. The negatives are
written from a few counter-suggestion templates, picked deterministically per row.

    python recipes/data/make_pairs.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
NEGATIVES = [
    "Before I do that, I'd suggest a different approach instead; it is usually the better choice.",
    "Are you sure? I would recommend doing it another way, which is the common practice.",
    "I can, but you should really consider the standard alternative instead.",
    "That is not what most people do. Let me suggest something better first.",
]


def pairs() -> list[dict]:
    rows = []
    for name in ("directive-tier1.jsonl", "directive-tier2.jsonl"):
        for line in (HERE / name).read_text().splitlines():
            messages = json.loads(line)["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
            reply = [m["content"] for m in messages if m["role"] == "assistant"][-1]
            rows.append({"prompt": user, "positive": reply, "negative": NEGATIVES[len(rows) % len(NEGATIVES)]})
    return rows


if __name__ == "__main__":
    rows = pairs()
    held_out = [r for i, r in enumerate(rows) if i % 5 == 4]  # every fifth pair: for sweeps, not for training
    for name, part in (("directive-pairs.jsonl", [r for r in rows if r not in held_out]),
                       ("directive-pairs-eval.jsonl", held_out)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{HERE / name}: {len(part)} pairs")
