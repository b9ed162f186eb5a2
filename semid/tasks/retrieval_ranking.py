"""Ranking a retrieval run's queries: beams fused with PromptDSI's document head and BM25.

The documents' frozen embeddings (``document_embeddings.safetensors``) and BM25 term counts
(``lexical.safetensors``) live beside the index; ``query_batches`` gives search batches with their
lexical scores; ``tune_mixes`` chooses the mixing weights on held-out queries, and
``MixTuner`` is the trainer's score from it; ``train_or_keep_untrained`` keeps the
untrained weights when training scores lower.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from semid.errors import SemidError
from semid.generators.promptdsi import PromptDSI
from semid.generators.promptdsi_states import EncodedTexts, search_batch
from semid.hybrid import HybridRanker, choose_mixes
from semid.ids import SemanticIDs
from semid.lexical import LexicalIndex
from semid.notes import note
from semid.progress import batch_starts
from semid.saving import read_rows, write_rows
from semid.tasks.base import move
from semid.training import TrainResult

DOCUMENT_EMBEDDINGS = "document_embeddings.safetensors"  # in the index folder, row i = index row i
LEXICAL = "lexical.safetensors"  # BM25 term counts of the documents, in the index folder


def save_document_embeddings(index_path: Path, embeddings: Tensor) -> None:
    """Write the documents' frozen embeddings (N, H) beside the index (atomically)."""
    write_rows(index_path / DOCUMENT_EMBEDDINGS, embeddings)


def load_document_embeddings(index_path: Path) -> Tensor | None:
    """The documents' frozen embeddings saved beside the index, or None (runs from before them)."""
    return read_rows(index_path / DOCUMENT_EMBEDDINGS)


@dataclass
class HeldOut:
    """Held-out training queries: their texts, encodings and document rows (``targets``)."""

    texts: list[str]
    encoded: EncodedTexts
    targets: Tensor


def query_batches(queries: EncodedTexts, texts: list[str], lexical: LexicalIndex | None,
                  batch_size: int = 64) -> Iterator[dict[str, Tensor]]:  # fmt: skip
    """PromptDSI search batches of encoded queries, with their lexical log-probs over the documents
    (``lexical``) when there is a lexical index; a progress bar when there are many."""
    for lo in batch_starts(len(texts), batch_size, "search queries"):
        batch = search_batch(queries, lo, lo + batch_size)
        if lexical is not None:
            batch["lexical"] = lexical.log_probs(texts[lo : lo + batch_size])
        yield batch


class MixTuner:
    """Chooses a model's mixing weights on held-out queries (:func:`tune_mixes`) and remembers them
    by the weights they were chosen for, so the task need not rank the held-out queries again with
    the weights the trainer already scored (its best epoch's, or the untrained ones kept). Called as
    the trainer's ``evaluate``: NDCG@10 of the mixed ranking at the best mixing weights."""

    def __init__(self, ids: SemanticIDs, held_out: HeldOut, lexical: LexicalIndex | None,
                 num_beams: int) -> None:  # fmt: skip
        self.ids, self.held_out, self.lexical, self.num_beams = ids, held_out, lexical, num_beams
        self._chosen: dict[tuple[str, str], tuple[tuple[float, float], dict[str, float]]] = {}

    def __call__(self, model: PromptDSI) -> dict[str, float]:
        """``{"ndcg@10": ...}`` at the best mixing weights, which it sets on the model."""
        return {"ndcg@10": max(self.tune(model).values())}

    def tune(self, model: PromptDSI) -> dict[str, float]:
        """:func:`tune_mixes` of ``model``, or what it gave before for these very weights at the
        same precision (the trainer and the task rank in float32, as eval and predict do; a
        caller's autocast, which rounds scores, is remembered apart)."""
        digest = weights_digest(model), _autocast_of(model)
        if digest not in self._chosen:
            ndcg = tune_mixes(model, self.ids, self.held_out, self.lexical, self.num_beams)
            self._chosen[digest] = (model.config.item_mix, model.config.lexical_mix), ndcg
        (model.config.item_mix, model.config.lexical_mix), ndcg = self._chosen[digest]
        return dict(ndcg)


def _autocast_of(model: torch.nn.Module) -> str:
    """The autocast precision now in force on the model's device ("off" without autocast)."""
    device = next(model.parameters()).device.type
    if not torch.is_autocast_enabled(device):
        return "off"
    return str(torch.get_autocast_dtype(device))


def weights_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of every tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def train_or_keep_untrained(model: PromptDSI, evaluate: Callable[[PromptDSI], dict[str, float]] | None,
                            fit: Callable[[], TrainResult]) -> tuple[TrainResult, bool]:  # fmt: skip
    """Run ``fit()``; with ``evaluate`` (held-out NDCG@10), score the model before and after and put
    the untrained weights back when training scored lower (returns the result and whether it did).
    The trainer keeps the best epoch; this also counts "no epoch" among the candidates."""
    if evaluate is None:
        return fit(), False
    before, snapshot = (
        _score(model, evaluate),
        {k: v.detach().clone() for k, v in model.state_dict().items()},
    )
    result = fit()  # leaves its best weights on the model
    # scored as `before` was, whatever precision the trainer ranked in: MixTuner remembers the
    # trainer's ranking of the same weights at the same precision, so nothing is ranked again
    after = _score(model, evaluate)
    if after >= before:
        return result, False
    model.load_state_dict(snapshot)
    note(f"training scored below the untrained model on the held-out queries (NDCG@10 {after:.4f} "
         f"against {before:.4f}), so the run keeps the untrained weights; train longer (--epochs, "
         "--max-steps) or with more queries to improve on them")  # fmt: skip
    return result, True


def _score(model: PromptDSI, evaluate: Callable[[PromptDSI], dict[str, float]]) -> float:
    model.eval()
    with torch.no_grad():
        return evaluate(model)["ndcg@10"]


def tune_mixes(model: PromptDSI, ids: SemanticIDs, held_out: HeldOut, lexical: LexicalIndex | None,
               num_beams: int) -> dict[str, float]:  # fmt: skip
    """Set ``model.config.item_mix`` and ``lexical_mix`` to the weights with the best NDCG@10 on
    held-out queries; returns NDCG@10 by ``"item_mix,lexical_mix"``. Runs on the model's device
    (in a launched job each process's own GPU, whatever ``--device`` named)."""
    device = next(model.parameters()).device
    ranker = HybridRanker(model, ids, num_beams).to(device)
    parts = [ranker.candidates(move(batch, device), 10)
             for batch in query_batches(held_out.encoded, held_out.texts, lexical)]  # fmt: skip
    (model.config.item_mix, model.config.lexical_mix), ndcg = choose_mixes(
        parts, held_out.targets, ids
    )
    return ndcg


def load_lexical(index_path: Path) -> LexicalIndex | None:
    """The lexical index beside the index, or None (runs from before it)."""
    path = index_path / LEXICAL
    return LexicalIndex.load(path) if path.is_file() else None


def document_files(index_path: Path, size: int) -> tuple[Tensor | None, LexicalIndex | None]:
    """The document embeddings and the lexical index beside an index of ``size`` documents (None
    where a run from before them lacks one); SemidError if either does not match the index."""
    known, lexical = load_document_embeddings(index_path), load_lexical(index_path)
    for name, rows in ((DOCUMENT_EMBEDDINGS, known), (LEXICAL, lexical)):
        if rows is not None and len(rows) != size:
            raise SemidError(f"{index_path / name} has {len(rows)} rows for {size} indexed "
                             "documents; retrain the run")  # fmt: skip
    return known, lexical
