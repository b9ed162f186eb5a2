"""The generator protocol: a model that writes semantic IDs, its registry, and save/load.

A generator is an ``nn.Module`` with a typed dataclass config that holds at least
``codebook_sizes`` (one entry per code level). Training calls ``forward(batch) -> (loss, logits)``;
inference calls ``generate(inputs, trie, num_beams, top_k)``, which runs the engine's
:func:`~semid.beam_search.constrained_beam_search` over the model's :meth:`Generator.step_model`.
Concrete models live in ``semid.generators`` and register in :mod:`semid.models` by name, so the
engine never imports one.

Trie softmax: with ``config.trie_softmax`` (and a trie given by ``use_trie`` for training), every
level's softmax runs over the codes the index allows after the prefix, in the loss and in the
search, so an ID's score is a log-probability over indexed items only (a model may narrow this to
some levels by overriding ``trie_softmax_levels``). Without it a model wastes
probability on codes no item has, which distorts how the search compares prefixes (on ml-100k
MMGRec's valid Recall@10 after 6-7 epochs rose from 0.039 to 0.065 with it, text-only IDs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semid.beam_search import StepModel, constrained_beam_search
from semid.errors import SemidError
from semid.models import (
    available_models,
    build_model,
    load_model,
    model_class,
    register_model,
    save_model,
)
from semid.trie import PrefixTrie


class Generator(nn.Module, ABC):
    """Base class of every generator: ``forward(batch) -> (loss, logits)`` plus constrained generation."""

    name: ClassVar[str]  # set by @register_generator
    config_class: ClassVar[type]  # a dataclass with a ``codebook_sizes`` field
    # config fields `sized_for` sets, with what sets them (a user's value would be replaced)
    SIZED_FIELDS: ClassVar[dict[str, str]] = {"codebook_sizes": "the index"}

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not dataclasses.is_dataclass(config) or not hasattr(config, "codebook_sizes"):
            raise TypeError(
                f"{type(self).__name__} needs a dataclass config with codebook_sizes, got {type(config).__name__}"
            )
        self.config = config
        # set with use_trie(); not saved: it is rebuilt from the index, which may have grown
        self.trie: PrefixTrie | None = None

    @classmethod
    def sized_for(cls, config: Any, ids: Any, extra_codes: int = 0, **context: Any) -> Any:
        """``config`` with the index's codebook sizes, plus ``extra_codes`` spare tokens at the
        disambiguation level (so IDs of items added later still fit the model's vocabulary)."""
        sizes = list(ids.codebook_sizes)
        if ids.collision is not None and ids.collision.extra_level:
            sizes[-1] += extra_codes
        return dataclasses.replace(config, codebook_sizes=sizes)

    def use_trie(self, trie: PrefixTrie | None) -> None:
        """Normalize each level's softmax over the codes ``trie`` allows (training loss and scores)."""
        if trie is not None:
            self.check_trie(trie)
        self.trie = trie

    def trie_softmax_levels(self) -> range:
        """Levels whose softmax runs over the codes the trie allows: all with ``config.trie_softmax``,
        none without. Training (``mask_to_trie``) and search (``search_steps``) both follow it."""
        if getattr(self.config, "trie_softmax", False):
            return range(len(self.codebook_sizes))
        return range(0)

    def mask_to_trie(self, logits: list[Tensor], target: Tensor) -> list[Tensor]:
        """Teacher-forced per-level logits [(R, V_l)] with the codes the trie (``use_trie``) disallows
        after each target's prefix set to -inf, at ``trie_softmax_levels``; unchanged without a trie.
        A target outside the trie keeps the full softmax from the level where it leaves the trie
        on (a finite loss, not NaN or infinite)."""
        levels = self.trie_softmax_levels()
        if self.trie is None or not levels:
            return logits
        if self.trie.device != target.device:
            self.trie = self.trie.to(target.device)  # once: later calls find it there
        states = torch.zeros(len(target), dtype=torch.long, device=target.device)
        masked = []
        for level, lg in enumerate(logits):
            if level in levels:
                allowed = self.trie.allowed_mask(states, level) | (states < 0)[:, None]
                allowed |= ~allowed.gather(1, target[:, level, None])  # the target's code leaves it
                lg = lg.masked_fill(~allowed, float("-inf"))
            masked.append(lg)
            states = self.trie.advance(states, level, target[:, level])
        return masked

    def level_loss(self, logits: list[Tensor], target: Tensor) -> Tensor:
        """Mean over levels of the cross-entropy of target codes (R, L) under per-level logits [(R, V_l)],
        each softmax over the codes the trie allows after the target's prefix (``mask_to_trie``),
        the same normalization the beam search then uses."""
        return mean_level_cross_entropy(self.mask_to_trie(logits, target), target)

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level the model can emit (its trie must use exactly these sizes)."""
        return list(self.config.codebook_sizes)

    @abstractmethod
    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Training loss () and logits for a batch of (inputs, target IDs)."""

    @abstractmethod
    def step_model(self) -> StepModel:
        """The adapter the beam search drives: start (encode once), step (one level), select (rows)."""

    def check_trie(self, trie: PrefixTrie) -> None:
        """Raise SemidError if the trie's levels or codebook sizes differ from the model's."""
        if trie.codebook_sizes != self.codebook_sizes:
            raise SemidError(
                f"trie codebook sizes {trie.codebook_sizes} differ from the model's {self.codebook_sizes}; "
                "build the trie with PrefixTrie.from_codes(codes, model.codebook_sizes)"
            )

    def check_trie_device(self, trie: PrefixTrie) -> None:
        """Raise SemidError if the trie is on another device than the model's weights (searching
        it would fail inside torch)."""
        weight = next(self.parameters(), None)
        if weight is not None and trie.device != weight.device:
            raise SemidError(f"trie is on {trie.device} but the model is on {weight.device}; pass "
                             f"trie.to({str(weight.device)!r})")  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        inputs: Any,
        trie: PrefixTrie,
        num_beams: int,
        top_k: int | None = None,
        exclude: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-k IDs in ``trie`` per query: codes (B, k, L) int64 (-1 padding) and log-probs (B, k).

        ``exclude`` (B, M): sorted leaf states of IDs not to return (see ``constrained_beam_search``)."""
        self.check_trie(trie)
        self.check_trie_device(trie)
        with self.evaluating():  # dropout would make beam scores random
            out = constrained_beam_search(
                self.search_steps(trie), inputs, trie, num_beams, top_k, exclude
            )
        return out.codes, out.log_probs

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) inside the block, the previous mode restored after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @contextlib.contextmanager
    def encoding_once(self) -> Iterator[None]:
        """A block in which the model may reuse a query batch's encoding for every pass over the
        same input tensors (a ranker that searches, scores candidates and reads an item head over
        one batch). Nothing is reused by default; models whose encoder dominates override it."""
        yield

    def has_item_head(self) -> bool:
        """Whether the model also scores index rows directly (:meth:`item_log_probs`); none by default."""
        return False

    def item_log_probs(self, inputs: Any) -> Tensor:
        """Log-probabilities (B, N) of the first N index rows from an item-level head (``has_item_head``)."""
        raise SemidError(f"{type(self).__name__} has no item-level head")

    @torch.no_grad()
    def score_codes(self, inputs: Any, trie: PrefixTrie, codes: Tensor) -> Tensor:
        """Log-probabilities (B, C) of given IDs ``codes`` (B, C, L) (all in ``trie``) for each query,
        teacher-forced through the same step model and normalization as ``generate``."""
        self.check_trie(trie)
        self.check_trie_device(trie)
        b, c, levels = codes.shape
        with self.evaluating():
            steps = self.search_steps(trie)
            logits, state = steps.start(inputs)
            rows = torch.arange(b, device=logits.device).repeat_interleave(c)
            logits, state = logits[rows], steps.select(state, rows)
            flat = codes.reshape(b * c, levels).to(logits.device)
            total = torch.zeros(b * c, device=logits.device)
            for level in range(levels):
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                total = total + log_probs.gather(1, flat[:, level : level + 1]).squeeze(1)
                if level + 1 < levels:
                    logits, state = steps.step(state, flat[:, level], level + 1)
        return total.view(b, c)

    def search_steps(self, trie: PrefixTrie) -> StepModel:
        """The step model that ``generate`` searches with: ``step_model()``, normalised over the
        codes the trie allows at ``trie_softmax_levels``."""
        steps = self.step_model()
        levels = self.trie_softmax_levels()
        return TrieNormalizedSteps(steps, trie, levels) if levels else steps

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json (name, config, versions) and model.safetensors into ``path``, atomically."""
        save_model(self, path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Generator:
        """Load a generator folder written by :meth:`save_pretrained` (any registered family)."""
        model = load_model(path)
        if not isinstance(model, cls):
            raise SemidError(f"{path} holds a {model.name!r} model, not a {cls.__name__}")
        return model


def mean_level_cross_entropy(logits: list[Tensor], target: Tensor) -> Tensor:
    """Mean over levels of the cross-entropy of target codes (R, L) under per-level logits [(R, V_l)]."""
    return torch.stack(
        [F.cross_entropy(lg.float(), target[:, level]) for level, lg in enumerate(logits)]
    ).mean()


class TrieNormalizedSteps:
    """Wraps a StepModel so the logits of ``levels`` (default: all) are -inf outside the trie: the
    search's log-softmax then normalizes over valid codes only, making the ID score a proper
    distribution over indexed items."""

    def __init__(self, inner: StepModel, trie: PrefixTrie, levels: range | None = None) -> None:
        self.inner, self.trie = inner, trie
        self.levels = range(trie.levels) if levels is None else levels

    def start(self, inputs: Any) -> tuple[Tensor, tuple[Any, Tensor]]:
        """Inner start, masked at level 0."""
        logits, state = self.inner.start(inputs)
        states = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return self._mask(logits, states, 0), (state, states)

    def step(
        self, state: tuple[Any, Tensor], codes: Tensor, level: int
    ) -> tuple[Tensor, tuple[Any, Tensor]]:
        """Inner step, with the trie state advanced by codes (R,) and the logits masked."""
        inner, states = state
        states = self.trie.advance(states, level - 1, codes)
        logits, inner = self.inner.step(inner, codes, level)
        return self._mask(logits, states, level), (inner, states)

    def select(self, state: tuple[Any, Tensor], rows: Tensor) -> tuple[Any, Tensor]:
        """Reorder inner state and trie states."""
        return self.inner.select(state[0], rows), state[1][rows]

    def _mask(self, logits: Tensor, states: Tensor, level: int) -> Tensor:
        if level not in self.levels:
            return logits
        return logits.masked_fill(~self.trie.allowed_mask(states, level), float("-inf"))


def register_generator(name: str) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: register a Generator subclass in the model registry under ``name``."""

    def wrap(cls: type[Generator]) -> type[Generator]:
        if not issubclass(cls, Generator):
            raise TypeError(f"{cls.__name__} is not a Generator")
        return register_model(name)(cls)

    return wrap


def available_generators() -> list[str]:
    """Registered models that write semantic IDs."""
    return [n for n in available_models() if issubclass(model_class(n), Generator)]


build_generator = build_model  # a generator is built like any registered model
