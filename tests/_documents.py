"""A tiny JSONL document collection for retrieval tests: topic words, one query per document."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "kernel audio python font game network editor printer camera database shell mail".split()


def write_docs(path: str | Path, n: int = 40) -> None:
    """Write ``n`` documents ``pkg0..`` to ``path``: each repeats its topic word and queries it."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            topic = WORDS[i % len(WORDS)]
            words = [topic] * 3 + rng.sample(WORDS, 5) + [f"pkg{i}"]
            doc = {"id": f"pkg{i}", "text": " ".join(words), "queries": [f"{topic} tool pkg{i}"]}
            f.write(json.dumps(doc) + "\n")
