"""PromptDSI's frozen-encoder states: computed once per text, cached on disk, padded into batches.

The frozen encoder's lower layers give the same states for a text every time, so they are computed
once (sorted by length, order kept) and cached by content under ``$SEMID_CACHE`` (default
``~/.cache/semid``), written as they are computed; training and search then read them
memory-mapped, so the states of a large corpus stay on disk until a batch needs them. With
``prompt_layer`` 0 (the default) the states are the encoder's input embeddings, which its token
ids give back in a lookup: those texts keep their token ids (``TokenStates``, 4 bytes a token
where float16 states take 2 x the hidden size) and are embedded when a batch is read. Also the
helpers that set PromptDSI's prompt keys and centroid head from these states and the quantizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from semid.atomic import DiskFullError, atomic_dir, remove_stale
from semid.encoders import model_identity
from semid.errors import SemidError
from semid.generators.promptdsi_layers import default_encoder_path
from semid.kmeans import kmeans
from semid.locking import current_writer, write_lock
from semid.notes import note
from semid.progress import progress_bar

if TYPE_CHECKING:
    from semid.generators.promptdsi import PromptDSI
    from semid.quantization import Quantizer


class TokenStates(Sequence[Tensor]):
    """Texts' states at ``prompt_layer`` 0 kept as their token ids and embedded when read.

    The encoder's input embeddings of a text are a lookup of its token ids (words, positions,
    then a layer norm per token), the same row by row whatever the batch, so a batch of texts is
    embedded from its ids, rounded to float16 as cached states are: the states a cache of them
    would give, for 4 bytes a token instead of 2 x the hidden size."""

    def __init__(
        self, ids: Sequence[Tensor], embeddings: torch.nn.Module, hidden_size: int
    ) -> None:
        self.ids, self.embeddings, self.hidden_size = list(ids), embeddings, hidden_size

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> TokenStates: ...
    def __getitem__(self, i: int | slice) -> Tensor | TokenStates:
        """A text's states (T, H) float16, or the texts of a slice (still ids)."""
        if isinstance(i, slice):
            return self.select(range(len(self))[i])
        hidden, lengths = self.select([i]).padded()
        return hidden[0, : int(lengths[0])].cpu()

    def __add__(self, other: TokenStates) -> TokenStates:
        if not isinstance(other, TokenStates) or other.embeddings is not self.embeddings:
            return NotImplemented
        return TokenStates(self.ids + other.ids, self.embeddings, self.hidden_size)

    def select(self, rows: Iterable[int]) -> TokenStates:
        """The texts at ``rows``, still as ids."""
        return TokenStates([self.ids[r] for r in rows], self.embeddings, self.hidden_size)

    @torch.no_grad()
    def padded(self) -> tuple[Tensor, Tensor]:
        """States (B, T, H) float16 on the encoder's device (a batch stays on the GPU that embedded
        it), zero past each text's end, and lengths (B,) on the CPU."""
        lengths = torch.tensor([len(t) for t in self.ids], dtype=torch.long)
        if not self.ids:
            return torch.zeros(0, 0, self.hidden_size, dtype=torch.float16), lengths
        ids = torch.nn.utils.rnn.pad_sequence([t.long() for t in self.ids], batch_first=True)
        device = next(self.embeddings.parameters()).device
        if device.type != "cpu" and torch.utils.data.get_worker_info() is not None:
            raise SemidError("PromptDSI embeds a batch's texts from their token ids on its device "
                             f"({device}), which a DataLoader worker process cannot use; train "
                             "with num_workers=0")  # fmt: skip
        with torch.autocast(device.type, enabled=False):  # as cached: full precision, then float16
            hidden = self.embeddings(input_ids=ids.to(device)).half()
        past_end = torch.arange(ids.shape[1], device=device)[None, :] >= lengths.to(device)[:, None]
        return hidden.masked_fill(past_end[..., None], 0), lengths


def select_states(states: Sequence[Tensor], rows: Iterable[int]) -> Sequence[Tensor]:
    """The per-text states at ``rows``: still token ids when they are (``TokenStates``)."""
    rows = [int(r) for r in rows]
    return states.select(rows) if isinstance(states, TokenStates) else [states[r] for r in rows]


@dataclass
class EncodedTexts:
    """Frozen-encoder outputs per text: prompt-free lower states and the sentence embedding."""

    # per text (T_i, H) float16, the input to layer prompt_layer (TokenStates at layer 0)
    states: Sequence[Tensor]
    embeddings: Tensor  # (N, H) float32, L2-normalised (the encoder's own sentence embedding)

    def rows(self, rows: Sequence[int] | Tensor) -> EncodedTexts:
        """The texts at ``rows``."""
        rows = [int(r) for r in rows]
        return EncodedTexts(select_states(self.states, rows), self.embeddings[rows])


def token_counts(texts: EncodedTexts) -> list[int]:
    """The tokens each text was read as (special tokens included): a text that reaches the
    model's `token_limit` was cut there."""
    states = texts.states
    per_text = states.ids if isinstance(states, TokenStates) else states
    return [len(s) for s in per_text]


def _cache_dir() -> Path:
    root = os.environ.get("SEMID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "semid") / "promptdsi"


def keeps_token_ids(model: PromptDSI) -> bool:
    """Whether ``model``'s lower states are its encoder's input embeddings (prompt_layer 0),
    kept as token ids (``TokenStates``) rather than float16 states."""
    return model.config.prompt_layer == 0


def _cache_key(model: PromptDSI, texts: Sequence[str]) -> str:
    """sha256 hex of the encoder (its config, or its folder's files: new weights in the same
    folder give a new key), the layer split, the length limit, the device kind when not the CPU
    (a GPU's states differ from the CPU's in their last digits) and the texts."""
    cfg = model.config
    encoder = cfg.encoder_config
    if encoder is None:  # loaded from a folder: what is in it now
        encoder = model_identity(Path(cfg.encoder_path or default_encoder_path()))
    identity = [
        # v2: a folder, its states memory-mapped; v3: token ids at layer 0 (TokenStates)
        "v3" if keeps_token_ids(model) else "v2",
        encoder,
        cfg.encoder_seed,
        cfg.max_length,
        cfg.prompt_layer,
    ]
    kind = next(model.parameters()).device.type
    h = hashlib.sha256(json.dumps(identity if kind == "cpu" else [*identity, kind]).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


# one cache entry: a folder of these two (at prompt_layer 0 the index alone: it holds the ids)
STATES, STATES_INDEX = "states.f16", "index.safetensors"
CACHE_FIX = "set SEMID_CACHE to a writable folder with room for the encoded texts"


def _encoded_batches(model: PromptDSI, texts: Sequence[str], batch_size: int,
                     desc: str) -> Iterator[tuple[list[int], list[Tensor], Tensor]]:  # fmt: skip
    """(rows, per-text states (T_i, H) float16 or, at prompt_layer 0, token ids (T_i,) int32,
    sentence embeddings (B, H)) per batch of texts, shortest texts first."""
    token_ids = keeps_token_ids(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for lo in progress_bar(
        range(0, len(texts), batch_size), desc=desc, disable=len(texts) <= batch_size
    ):
        rows = order[lo : lo + batch_size]
        inp = model.tokenize([texts[i] for i in rows])
        hidden = model.lower_states(**inp)
        embeddings = model.text_embedding(hidden, inp["attention_mask"]).float().cpu()
        lengths = inp["attention_mask"].sum(1).tolist()
        # one copy from a GPU per batch; each text's rows its own
        states = inp["input_ids"].to(torch.int32).cpu() if token_ids else hidden.half().cpu()
        yield rows, [states[j, :n].clone() for j, n in enumerate(lengths)], embeddings


def _as_states(model: PromptDSI, per_text: list[Tensor]) -> Sequence[Tensor]:
    """Per-text states as ``_encoded_batches`` gives them: token ids at prompt_layer 0 are
    ``TokenStates``, embedded by the model's encoder when read."""
    if not keeps_token_ids(model):
        return per_text
    return TokenStates(per_text, model.encoder.embeddings, model.encoder.config.hidden_size)


@torch.no_grad()
def encode_texts(
    model: PromptDSI,
    texts: Sequence[str],
    batch_size: int = 64,
    desc: str = "encode",
    cache: bool = True,
) -> EncodedTexts:
    """Run the frozen encoder once per text (sorted by length, order kept).

    With ``cache`` the states go to disk as they are computed, keyed by the encoder and the texts,
    and come back memory-mapped: a corpus of any size costs RAM for one batch of states, not for
    all of them, and a later call with the same texts reads them instead of encoding again. At
    prompt_layer 0 the texts' token ids are kept instead (``TokenStates``), embedded on the device
    the model is on when a batch is read."""
    texts = list(texts)
    hidden_size = model.encoder.config.hidden_size
    if not texts:  # e.g. new documents without queries
        return EncodedTexts(_as_states(model, []), torch.zeros(0, hidden_size))
    batches = _encoded_batches(model, texts, batch_size, desc)
    if not cache:
        states: list[Tensor] = [torch.empty(0)] * len(texts)
        embeddings = torch.zeros(len(texts), hidden_size)
        for rows, batch_states, batch_embeddings in batches:
            embeddings[rows] = batch_embeddings
            for i, s in zip(rows, batch_states, strict=True):
                states[i] = s
        return EncodedTexts(_as_states(model, states), embeddings)
    folder = _cache_dir() / _cache_key(model, texts)
    cached = _read_cached(folder, len(texts), model)
    if cached is not None:
        return cached
    # the lock checks the cache folder before any encoding (the batches are lazy)
    with _one_encoder_of(folder):  # another process encoding these texts: its entry is read
        cached = _read_cached(folder, len(texts), model)
        if cached is not None:
            return cached
        _remove_dead_writers_leftovers(folder.parent)
        try:
            with atomic_dir(folder, label="cache") as tmp:
                _write_cached(tmp, batches, len(texts), hidden_size,
                              token_ids=keeps_token_ids(model))  # fmt: skip
        except DiskFullError as e:
            raise SemidError(f"{e}; or {CACHE_FIX}") from None
    cached = _read_cached(folder, len(texts), model)
    if cached is None:
        raise SemidError(f"the encoded texts just written to {folder} do not read back; "
                         f"check the disk, or {CACHE_FIX}")  # fmt: skip
    return cached


WAIT_FOR_ENCODER_S = 24 * 3600.0  # a live process encoding the same texts is waited for this long


@contextmanager
def _one_encoder_of(folder: Path) -> Iterator[None]:
    """Hold the write lock of a cache entry while it is encoded: a second process with the same
    texts (another rank of an `accelerate launch`ed job, or another command) waits, with a note,
    and then reads the entry instead of encoding the texts again; a holder that dies frees it."""
    what, fixes = f"the encoded texts {folder}", {"fix": CACHE_FIX, "unwritable_fix": CACHE_FIX}
    with ExitStack() as stack:
        try:
            stack.enter_context(write_lock(folder, what, **fixes))
        except SemidError as held:
            if current_writer(folder) is None:  # not held by a live process: another refusal
                raise
            note(f"waiting for another process encoding the same texts ({held}); its entry is "
                 "read when it is done")  # fmt: skip
            stack.enter_context(write_lock(folder, what, timeout=WAIT_FOR_ENCODER_S, **fixes))
        yield


def _remove_dead_writers_leftovers(root: Path) -> None:
    """The temporary folders of cache writers that died (``kill -9``), under any key: a write of
    the same texts would remove its own, but other texts may never come again, and each can hold
    gigabytes of states."""
    for key in sorted({entry.name[1:].split(".", 1)[0] for entry in root.glob(".*.tmp")}):
        remove_stale(root / key)


def _write_cached(folder: Path, batches: Iterator[tuple[list[int], list[Tensor], Tensor]],
                  n: int, hidden_size: int, token_ids: bool = False) -> None:  # fmt: skip
    """Stream the batches' states into ``folder/STATES`` (float16 rows, in encoding order); then
    each text's first row and length, and the embeddings, into ``folder/STATES_INDEX``. With
    ``token_ids`` the batches hold token ids, which go into the index with a digest of the whole
    index (no states file)."""
    offsets, lengths = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    embeddings = torch.zeros(n, hidden_size)
    pieces: list[Tensor] = []  # the token ids, in encoding order
    written = 0
    with ExitStack() as stack:
        states_file = None if token_ids else stack.enter_context(open(folder / STATES, "wb"))
        for rows, batch_states, batch_embeddings in batches:
            embeddings[rows] = batch_embeddings
            for i, s in zip(rows, batch_states, strict=True):
                offsets[i], lengths[i] = written, len(s)
                if states_file is None:
                    pieces.append(s)
                else:
                    states_file.write(s.contiguous().numpy().tobytes())
                written += len(s)
    index = {"offsets": offsets, "lengths": lengths, "embeddings": embeddings}
    if token_ids:
        index["ids"] = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32)
        index["digest"] = _digest(offsets, lengths, index["ids"], embeddings)
    save_file(index, str(folder / STATES_INDEX))


def _digest(*tensors: Tensor) -> Tensor:
    """sha256 (32,) uint8 of the tensors' bytes: damage anywhere in an entry (blocks a crash left
    unwritten read as zeros, which are valid token ids in some vocabularies) changes it."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


def _read_cached(folder: Path, n: int, model: PromptDSI) -> EncodedTexts | None:
    """The cache entry in ``folder`` for ``model``'s texts, its states memory-mapped (token ids at
    prompt_layer 0); None if it is missing or damaged (then the texts are encoded again)."""
    hidden_size = model.encoder.config.hidden_size
    token_ids = keeps_token_ids(model)
    states_path, index_path = folder / STATES, folder / STATES_INDEX
    if not (index_path.is_file() and (token_ids or states_path.is_file())):
        return None
    try:
        index = load_file(str(index_path))
    except (SafetensorError, OSError, ValueError):  # a truncated or garbled file
        return None
    offsets, lengths = index.get("offsets"), index.get("lengths")
    embeddings = index.get("embeddings")
    if offsets is None or lengths is None or embeddings is None or len(lengths) != n:
        return None
    rows = int(lengths.sum())
    if embeddings.shape != (n, hidden_size):
        return None
    if n and (int(offsets.min()) < 0 or int((offsets + lengths).max()) > rows):
        return None
    if not torch.isfinite(embeddings).all():  # damaged: the encoder gives finite vectors
        return None
    if token_ids:
        flat = index.get("ids")
        digest = index.get("digest")
        if flat is None or digest is None or flat.shape != (rows,):
            return None
        if not torch.equal(digest, _digest(offsets, lengths, flat, embeddings)):
            return None
    elif states_path.stat().st_size != rows * hidden_size * 2:
        return None
    elif rows == 0:  # every text tokenized to nothing: numpy cannot map an empty file
        flat = torch.zeros(0, hidden_size, dtype=torch.float16)
    else:  # read-only: pages are read from the file when used, and the file may exceed RAM (a
        # copy-on-write map would need that much memory committed); nothing writes to the states
        mapped = np.memmap(states_path, np.float16, mode="r", shape=(rows, hidden_size))
        with warnings.catch_warnings():  # torch warns that the array is not writable
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(mapped)
        if _zero_filled(flat):
            return None
    states = [flat[o : o + k] for o, k in zip(offsets.tolist(), lengths.tolist(), strict=True)]
    return EncodedTexts(_as_states(model, states), embeddings)


def _zero_filled(flat: Tensor, samples: int = 64) -> bool:
    """Whether some of the states rows (T, H), sampled evenly from the first to the last
    (`evenly_spaced`), are all zero: blocks of a file that were never written (a crash can leave
    them so) have the right size and read as zeros, while a token's state never is. A sample: a
    gap of fewer than T / samples rows may pass."""
    return bool((flat[evenly_spaced(len(flat), samples)] == 0).all(dim=1).any())


def evenly_spaced(n: int, k: int) -> Tensor:
    """Up to ``k`` row numbers spread evenly over ``range(n)``, the first and the last among them,
    computed in integers (float32 rounds past the end beyond 2**24 rows)."""
    k = min(k, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def pad_states(states: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad per-text states (T_i, H) -> hidden (B, T, H) float32 and attention_mask (B, T),
    on the device the states are on; SemidError for states that are not finite (a damaged cache
    entry, or encoder weights)."""
    if isinstance(states, TokenStates):  # embedded now: NaN would come from the encoder's weights
        half, lengths = states.padded()
        damaged = ("the encoder's input embeddings hold NaN or infinity: its weights are damaged; "
                   "reinstall the encoder, or give another (encoder_path)")  # fmt: skip
    else:
        states = list(states)
        half = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        lengths = torch.tensor([len(s) for s in states])
        damaged = (f"encoded texts read from {_cache_dir()} hold NaN or infinity: a cache entry "
                   "is damaged; remove that folder (the texts are encoded again)")  # fmt: skip
    hidden = half.float()
    if not torch.isfinite(hidden).all():
        raise SemidError(damaged)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (positions[None, :] < lengths.to(hidden.device)[:, None]).long()
    return {"hidden": hidden, "attention_mask": mask}


def search_batch(texts: EncodedTexts, lo: int, hi: int) -> dict[str, Tensor]:
    """The PromptDSI inputs of texts[lo:hi]: padded lower states and their cached sentence embeddings."""
    return {**pad_states(texts.states[lo:hi]), "embedding": texts.embeddings[lo:hi]}


def centroid_codebooks(quantizer: Quantizer, width: int) -> Tensor | None:
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


def set_key_center(model: PromptDSI, docs: EncodedTexts) -> None:
    """Centre the model's prompt matching on these documents' mean pooled lower states."""
    model.set_key_center_((b["hidden"], b["attention_mask"]) for b in padded_batches(docs))


def topic_keys(model: PromptDSI, docs: EncodedTexts, m: int, seed: int = 0) -> Tensor:
    """m fixed topic keys (m, H): k-means centroids of the documents' matching vectors."""
    vectors = [model.query_keys(b["hidden"], b["attention_mask"]) for b in padded_batches(docs)]
    return kmeans(torch.cat(vectors), m, seed=seed)
