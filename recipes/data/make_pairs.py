"""Write directive-pairs.jsonl and directive-pairs-eval.jsonl: contrast pairs for steering, probes and
`toolkit eval`.

Each row is {"prompt": the user's directive, "positive": the reply that acknowledges and follows it
(from the dataset), "negative": a reply that proposes an alternative instead}. The negatives are
written from a few counter-suggestion templates, picked deterministically per row. The training pairs
come from the tier 1-2 training files; the evaluation pairs from directive-heldout.jsonl, the examples
`make_directive.py` keeps out of every training tier.

    python recipes/data/make_directive.py && python recipes/data/make_pairs.py
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
OUTPUTS = {
    "directive-pairs.jsonl": ("directive-tier1.jsonl", "directive-tier2.jsonl"),
    "directive-pairs-eval.jsonl": ("directive-heldout.jsonl",),  # never trained on: for sweeps and toolkit eval
}


def pairs(names: tuple[str, ...]) -> list[dict]:
    rows = []
    for name in names:
        for line in (HERE / name).read_text(encoding="utf-8").splitlines():
            messages = json.loads(line)["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
            reply = [m["content"] for m in messages if m["role"] == "assistant"][-1]
            rows.append({"prompt": user, "positive": reply, "negative": NEGATIVES[len(rows) % len(NEGATIVES)]})
    return rows


if __name__ == "__main__":
    for out, sources in OUTPUTS.items():
        rows = pairs(sources)
        (HERE / out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{HERE / out}: {len(rows)} pairs")
