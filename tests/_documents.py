"""A tiny JSONL document collection for retrieval tests: topic words, one query per document."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from semid.tasks.retrieve import RetrieveSpec
from semid.training import TrainConfig

# a tiny random encoder and decoder: a retrieval run trains in seconds
TINY_PROMPTDSI = {
    "encoder_config": {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "max_length": 24,
    "prompt_layer": 1,
    "prompt_length": 2,
    "pool_sizes": [4],
    "d_model": 32,
    "num_heads": 2,
    "num_layers": 1,
    "d_ff": 64,
}

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


def tiny_spec(dataset: str | Path, hold_out: float = 0.2) -> RetrieveSpec:
    """A retrieval spec over ``dataset`` that trains in seconds (one epoch of the tiny model)."""
    train = TrainConfig(max_epochs=1, batch_size=16, lr=2e-3, warmup_steps=2, checkpoint_every=200)
    return RetrieveSpec(dataset=str(dataset), model_config=TINY_PROMPTDSI, train=train,
                        add_train=replace(train, lr=1e-2), quantizer="rqkmeans:2x4,kmeans=lloyd",
                        extra_codes=8, hold_out=hold_out, num_beams=5)  # fmt: skip
