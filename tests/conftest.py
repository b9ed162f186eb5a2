"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch/faiss load (see semid/__init__.py): spinning OpenMP threads starve each other here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from semid.fake_predictor import FakePredictor
from semid.notes import show_on_console

# the library's notes and progress lines show as `semid` commands show them, also in tests that
# call the library directly (capsys reads them)
show_on_console()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared CPU two threads can be 10x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fast_image_fits(monkeypatch):
    """Text-to-image indexes fit their image encoder and voken quantizer for tens of steps instead
    of their defaults' hundreds (400 encoder steps, 300 quantizer steps, 1000 projection steps): for
    tests of a command's flow (resume, refusals, adds), which need IDs, not good ones; in-process
    only. Use with ``pytestmark = pytest.mark.usefixtures("fast_image_fits")``."""
    import dataclasses
    from functools import partial

    from semid.quantizers import voken
    from semid.tasks import text2image

    fast = dataclasses.replace(voken.DEFAULT_TRAIN_CONFIG, min_steps=30)
    monkeypatch.setattr(voken, "DEFAULT_TRAIN_CONFIG", fast)
    monkeypatch.setattr(voken, "PROJECTION_MIN_STEPS", 50)
    encoder = partial(text2image.train_image_encoder, min_steps=40)
    monkeypatch.setattr(text2image, "train_image_encoder", encoder)


@pytest.fixture
def data_dir() -> Path:
    """tests/data: tiny hand-written fixture files (see tests/data/README.md)."""
    return Path(__file__).parent / "data"


def train_on_batch(model, batch: dict, steps: int = 80, lr: float = 3e-3) -> None:
    """Overfit a generator on one batch with Adam (for 'it learns' tests)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


# Tiny configs shared by the model tests (codebook sizes are added by each test).
TINY_GENERATORS = {
    "tiger": {"max_items": 4, "user_buckets": 5, "d_model": 16, "d_ff": 32, "d_kv": 8, "num_heads": 2,
              "num_layers": 1},
    "mmgrec": {"dim": 16, "heads": 2, "layers": 1, "ff_mult": 1},
}  # fmt: skip
TINY_BERT = {  # a random frozen encoder for PromptDSI
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.1,
}


def random_ml100k_index(tmp_path):
    """An rqkmeans:2x32 index of ml-100k's items over random 8-d embeddings, built with the CLI:
    (item keys, embeddings (N, 8), index folder)."""
    import numpy as np

    import semid.quantizers  # noqa: F401  (registers rqkmeans)
    from semid.cli.main import main
    from semid.data import load_dataset

    keys = load_dataset("ml-100k").item_keys
    x = np.random.default_rng(0).standard_normal((len(keys), 8)).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    (tmp_path / "e.txt").write_text("\n".join(keys) + "\n")
    idx = tmp_path / "idx"
    assert main(["index", "build", "--embeddings", str(tmp_path / "e.npy"), "--keys", str(tmp_path / "e.txt"),
                 "--quantizer", "rqkmeans:2x32", "--out", str(idx)]) == 0  # fmt: skip
    return keys, x, idx


class FailingPredictor(FakePredictor):
    """FakePredictor whose predict fails (a bug, not bad input) whenever k == 7; module-level, so
    that a model process can load it too."""

    def predict(self, inputs, k, num_beams=None):
        if k == 7:
            raise RuntimeError("boom")
        return super().predict(inputs, k, num_beams)


class DyingPredictor(FakePredictor):
    """FakePredictor whose process dies (as the out-of-memory killer would end it) whenever k == 9;
    module-level, so that a model process can load it too."""

    def predict(self, inputs, k, num_beams=None):
        if k == 9:
            os._exit(137)
        return super().predict(inputs, k, num_beams)
