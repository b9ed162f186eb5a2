"""PromptDSI's frozen-encoder states: computed once per text, cached on disk, padded into batches.

The frozen encoder's lower layers give the same states for a text every time, so they are computed
once (sorted by length, order kept) and cached by content under ``$SEMID_CACHE`` (default
``~/.cache/semid``); training and search then read them. Also the helpers that set PromptDSI's
prompt keys and centroid head from these states and from the quantizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from semid.atomic import atomic_file
from semid.kmeans import kmeans
from semid.progress import progress_bar


@dataclass
class EncodedTexts:
    """Frozen-encoder outputs per text: prompt-free lower states and the sentence embedding."""

    states: list[Tensor]  # per text (T_i, H) float16, the input to layer prompt_layer
    embeddings: Tensor  # (N, H) float32, L2-normalised (the encoder's own sentence embedding)

    def rows(self, rows: Sequence[int] | Tensor) -> EncodedTexts:
        """The texts at ``rows``."""
        rows = [int(r) for r in rows]
        return EncodedTexts([self.states[r] for r in rows], self.embeddings[rows])


def _cache_dir() -> Path:
    root = os.environ.get("SEMID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "semid") / "promptdsi"


def _cache_key(model: Any, texts: Sequence[str]) -> str:
    cfg = model.config
    h = hashlib.sha256(
        json.dumps(
            [
                "v1",
                cfg.encoder_path,
                cfg.encoder_config,
                cfg.encoder_seed,
                cfg.max_length,
                cfg.prompt_layer,
            ]
        ).encode()
    )
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


@torch.no_grad()
def encode_texts(
    model: Any, texts: Sequence[str], batch_size: int = 64, desc: str = "encode", cache: bool = True
) -> EncodedTexts:
    """Run the frozen encoder once per text (sorted by length, order kept); cached on disk by content."""
    texts = list(texts)
    if not texts:  # e.g. new documents without queries
        return EncodedTexts([], torch.zeros(0, model.encoder.config.hidden_size))
    path = _cache_dir() / f"{_cache_key(model, texts)}.safetensors"
    if cache and path.is_file():
        t = load_file(str(path))
        return EncodedTexts(list(torch.split(t["states"], t["lengths"].tolist())), t["embeddings"])
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    states: list[Tensor | None] = [None] * len(texts)
    emb = torch.zeros(len(texts), model.encoder.config.hidden_size)
    for lo in progress_bar(
        range(0, len(texts), batch_size), desc=desc, disable=len(texts) <= batch_size
    ):
        rows = order[lo : lo + batch_size]
        inp = model.tokenize([texts[i] for i in rows])
        hidden = model.lower_states(**inp)
        emb[rows] = model.text_embedding(hidden, inp["attention_mask"]).float().cpu()
        lengths = inp["attention_mask"].sum(1).tolist()
        for j, i in enumerate(rows):
            states[i] = hidden[j, : lengths[j]].half().cpu()
    out = EncodedTexts(states, emb)
    if cache:
        with atomic_file(path, "wb") as f:
            f.write(_to_bytes(out))
    return out


def _to_bytes(enc: EncodedTexts) -> bytes:
    lengths = torch.tensor([len(s) for s in enc.states], dtype=torch.long)
    return save(
        {
            "states": torch.cat(enc.states).contiguous(),
            "lengths": lengths,
            "embeddings": enc.embeddings.contiguous(),
        }
    )


def pad_states(states: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad per-text states (T_i, H) -> hidden (B, T, H) float32 and attention_mask (B, T)."""
    hidden = torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True).float()
    lengths = torch.tensor([len(s) for s in states])
    mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long()
    return {"hidden": hidden, "attention_mask": mask}


def search_batch(texts: EncodedTexts, lo: int, hi: int) -> dict[str, Tensor]:
    """The PromptDSI inputs of texts[lo:hi]: padded lower states and their cached sentence embeddings."""
    return {**pad_states(texts.states[lo:hi]), "embedding": texts.embeddings[lo:hi]}


def centroid_codebooks(quantizer: Any, width: int) -> Tensor | None:
    """Residual k-means codebooks (L, K, width) that PromptDSI's centroid head can use, else None.

    Only residual k-means qualifies: its level-l code is the nearest level-l centroid to the residual
    of the same sentence embedding the frozen encoder produces (width = the encoder's hidden size)."""
    books = getattr(quantizer, "codebooks", None)
    if getattr(quantizer.spec, "family", None) != "rqkmeans" or books is None:
        return None
    return books.detach().float().cpu() if books.shape[-1] == width else None


def padded_batches(texts: EncodedTexts, size: int = 256) -> Iterator[dict[str, Tensor]]:
    """``pad_states`` of ``size`` texts at a time: one padded float32 batch in memory, not all."""
    for lo in range(0, len(texts.states), size):
        yield pad_states(texts.states[lo : lo + size])


def set_key_center(model: Any, docs: EncodedTexts) -> None:
    """Centre the model's prompt matching on these documents' mean pooled lower states."""
    model.set_key_center_((b["hidden"], b["attention_mask"]) for b in padded_batches(docs))


def topic_keys(model: Any, docs: EncodedTexts, m: int, seed: int = 0) -> Tensor:
    """m fixed topic keys (m, H): k-means centroids of the documents' matching vectors."""
    vectors = [model.query_keys(b["hidden"], b["attention_mask"]) for b in padded_batches(docs)]
    return kmeans(torch.cat(vectors), m, seed=seed)
