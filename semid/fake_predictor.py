"""A deterministic stand-in `Predictor` (no model) for serving tests and benchmarks/serve.py.

Catalogue: ``num_items`` keys ``item000``, ``item001``, ... with 2-level IDs [i // 10, i % 10];
users ``u0`` ... ``u{num_users-1}``. It accepts all three input kinds ({"user"}, {"history"},
{"query"}). Scores mimic beam search: the ``num_beams`` best items by a coarse score survive, then the
top k of those by a fine score are returned, so the answer for k=5 with 20 beams need not be the top
5 of k=30 with 30 beams. Every answer depends only on its own input, k and num_beams. ``predict``
sleeps ``delay_s + per_input_s * len(inputs)`` to stand for model time (the GIL is released, as in
a GPU model) and records (batch size, k, num_beams) in ``calls``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from semid.errors import SemidError

DEFAULT_BEAMS = 20


class FakePredictor:
    """Deterministic Predictor over a synthetic catalogue; see the module docstring."""

    task = "recommend"

    def __init__(
        self,
        num_items: int = 100,
        num_users: int = 50,
        delay_s: float = 0.0,
        per_input_s: float = 0.0,
    ) -> None:
        self.keys = [f"item{i:03d}" for i in range(num_items)]
        self._index = {key: i for i, key in enumerate(self.keys)}
        self.users = [f"u{i}" for i in range(num_users)]
        self._users = set(self.users)
        self.delay_s = delay_s
        self.per_input_s = per_input_s
        self.calls: list[tuple[int, int, int | None]] = []
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Task, model name, catalogue size, the num_beams default and the list fields it takes."""
        return {
            "task": self.task,
            "model": "fake",
            "index_size": len(self.keys),
            "num_beams": DEFAULT_BEAMS,
            "inputs": ["users", "histories", "queries", "inputs"],  # all three kinds, as said above
        }

    def max_k(self) -> int:
        """Catalogue size."""
        return len(self.keys)

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """{"user": known ID} | {"history": non-empty list of known keys} | {"query": non-empty text}."""
        if not isinstance(item, dict) or len(item) != 1:
            raise SemidError(
                'an input is one of {"user": ID}, {"history": [KEY, ...]}, {"query": TEXT}'
            )
        (kind, value), = item.items()  # fmt: skip
        if kind == "user":
            if value not in self._users:
                raise SemidError(
                    f"unknown user {value!r}; known users are u0..u{len(self.users) - 1}"
                )
        elif kind == "history":
            if not isinstance(value, list) or not value:
                raise SemidError("history must be a non-empty list of item keys")
            unknown = [v for v in value if not isinstance(v, str) or v not in self._index]
            if unknown:
                raise SemidError(f"unknown item key {unknown[0]!r} in history")
        elif kind == "query":
            if not isinstance(value, str) or not value.strip():
                raise SemidError("query must be a non-empty string")
        else:
            raise SemidError(f"unknown input kind {kind!r}; use user, history or query")
        return item

    def predict(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """Top-k answers, best first, one per input (see the module docstring)."""
        if k > len(self.keys):
            raise SemidError(f"k={k} is larger than the catalogue ({len(self.keys)} items)")
        beams = max(k, DEFAULT_BEAMS) if num_beams is None else num_beams
        if beams < k:
            raise SemidError(f"num_beams={beams} must be >= k={k}")
        beams = min(beams, len(self.keys))
        with self._lock:
            self.calls.append((len(inputs), k, num_beams))
        time.sleep(self.delay_s + self.per_input_s * len(inputs))
        return [self._answer(x, k, beams) for x in inputs]

    def read_data(self) -> None:
        """Nothing to read: the fake users need no data."""
        return

    def unsearched_note(self) -> str | None:
        """None: the fake items are all searched."""
        return None

    def item_texts(self, keys: Sequence[str]) -> list[str] | None:
        """None: the fake items have no texts."""
        return None

    def resolve(self, checked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The inputs themselves: a fake user needs no data."""
        return checked

    def predict_resolved(
        self, resolved: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """``predict`` of resolved inputs (which are the inputs)."""
        return self.predict(resolved, k, num_beams)

    def sample_inputs(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """n valid inputs (users and histories), for benchmarks."""
        rng = np.random.default_rng(seed)
        out: list[dict[str, Any]] = []
        for i in range(n):
            if i % 2 == 0:
                out.append({"user": self.users[int(rng.integers(len(self.users)))]})
            else:
                picks = rng.choice(len(self.keys), size=3, replace=False)
                out.append({"history": [self.keys[int(j)] for j in picks]})
        return out

    def _answer(self, item: dict[str, Any], k: int, beams: int) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        coarse = rng.random(len(self.keys))
        fine = coarse + rng.random(len(self.keys))
        survivors = np.argsort(-coarse, kind="stable")[:beams]
        top = survivors[np.argsort(-fine[survivors], kind="stable")][:k]
        return {
            "input": item,
            "keys": [self.keys[i] for i in top],
            "scores": [float(fine[i]) for i in top],
            "ids": [[int(i) // 10, int(i) % 10] for i in top],
        }
