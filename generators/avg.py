"""AVG (Li et al. 2024, "Revolutionizing Text-to-Image Retrieval as Autoregressive Token-to-Voken
Generation"): a text query is turned into the voken ID of an image, one code per step under the
trie.

The query arrives as a frozen sentence embedding (MiniLM, (B, query_dim)); a small MLP maps it to
the initial state of a GRU decoder that reads the codes chosen so far and scores the next level.
Training adds to the generative loss (cross-entropy of each next voken) AVG's discriminative
loss, which corrects the learning direction toward the retrieval target. The generative loss
pushes each query toward one particular image's ID, although every image of the class is an
equally good answer; the discriminative loss instead ranks, at every level, the next vokens of
all in-batch targets that share the query's prefix, and asks that the relevant ones (same class,
``labels``; without labels, the same ID) take the probability mass from the others.

Image head (``image_dim`` > 0 and ``item_loss`` > 0): the voken ID of an image is shared by its
near neighbours, so beam search cannot order the images inside one prefix, nor tell an image from
another class that the quantizer put among them. The head is a text tower and an image tower
(:class:`~semid.generators.dual_encoder.DualEncoder`) trained beside the generator with a
class-aware contrastive loss weighted ``item_loss`` (``batch["image"]``: each target image's
features). At search the features of the indexed images (``set_items_``; the task keeps them
beside the index and grows them at ``index add``) give log p(image | query), and
:class:`semid.hybrid.HybridRanker` ranks the union of the beams and the head's top images by
log p(ID) + ``item_mix`` * log p(image).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semid.errors import SemidError
from semid.generator import Generator, register_generator
from semid.generators.dual_encoder import DualEncoder, DualEncoderConfig
from semid.vocab import CodeVocabulary


@dataclass
class AvgConfig:
    """AVG hyper-parameters; the defaults train at about 25 s per epoch of 60k pairs on one CPU thread."""

    LIMITS: ClassVar = {"query_dim": "count", "d_model": "count", "dropout": "probability",
                        **dict.fromkeys(("disc_weight", "image_dim", "item_loss", "item_mix"), "non-negative"),
                        "temperature": "positive"}  # fmt: skip

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    query_dim: int = 384  # width of the frozen text embeddings (MiniLM)
    d_model: int = 128
    dropout: float = 0.1
    # weight of the discriminative loss; 0 trains the generative loss only. 4 was chosen on
    # validation images of Fashion-MNIST and digits (benchmarks/results/text2image-validation-sweep.md)
    disc_weight: float = 4.0
    # image head: width of the image features (0: no head; the task sets it from the index),
    # weight of its contrastive loss, and its weight in the ranking score (see the module docstring).
    # item_mix 2 had the best validation mAP@100 on both collections among 0-8 (P@10 1.0 from 0.25
    # up; benchmarks/results/text2image-validation.md, text2image-digits-validation.md)
    image_dim: int = 0
    item_loss: float = 1.0
    item_mix: float = 2.0
    temperature: float = 0.1


@register_generator("avg")
class Avg(Generator):
    """Query embedding (B, query_dim) -> voken ID (B, L); ``forward`` needs query and target_codes."""

    config_class = AvgConfig

    def __init__(self, config: AvgConfig) -> None:
        super().__init__(config)
        for name in ("disc_weight", "item_loss", "item_mix", "image_dim"):
            if getattr(config, name) < 0:
                raise SemidError(f"AvgConfig.{name} must be >= 0, got {getattr(config, name)}")
        d = config.d_model
        self.vocab = CodeVocabulary(config.codebook_sizes)
        self.query_tower = nn.Sequential(
            nn.Linear(config.query_dim, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, d)
        )
        self.code_embedding = nn.Embedding(self.vocab.size, d)
        self.gru = nn.GRUCell(d, d)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in config.codebook_sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.image_head = (
            DualEncoder(
                DualEncoderConfig(config.query_dim, config.image_dim, d, config.temperature)
            )
            if config.image_dim > 0 and config.item_loss > 0
            else None
        )
        # features (N, image_dim) of the indexed images, row i = index row i (set_items_; not saved,
        # the task keeps them beside the index); a buffer, so it follows the model's device
        self.register_buffer("items", torch.zeros(0, max(config.image_dim, 1)), persistent=False)
        self._image_cache: tuple[tuple[Any, ...], Tensor] | None = None  # see _indexed_images

    SIZED_FIELDS: ClassVar[dict[str, str]] = {
        **Generator.SIZED_FIELDS,
        "image_dim": "the index's image features",
        "query_dim": "the text encoder",
    }

    @classmethod
    def sized_for(cls, config: AvgConfig, ids: Any, extra_codes: int = 0, image_dim: int = 0,
                  query_dim: int | None = None, **context: Any) -> AvgConfig:  # fmt: skip
        """Codebook sizes from the index, the image head's width from the images' features
        (``image_dim``; 0 when the index keeps none, or when ``item_loss`` is 0) and the query
        tower's input width from the text encoder's (``query_dim``; None keeps the config's)."""
        config = super().sized_for(config, ids, extra_codes)
        return replace(config, image_dim=image_dim if config.item_loss > 0 else 0,
                       query_dim=query_dim or config.query_dim)  # fmt: skip

    def initial_state(self, query: Tensor) -> Tensor:
        """Decoder state (B, d_model) of query embeddings (B, query_dim)."""
        if query.ndim != 2 or query.shape[1] != self.config.query_dim:
            raise SemidError(
                f"AVG takes query embeddings of shape (B, {self.config.query_dim}), got {tuple(query.shape)}"
            )
        return self.query_tower(query.float())

    def next_state(self, state: Tensor, codes: Tensor, level: int) -> Tensor:
        """State (R, d_model) after reading codes (R,) of ``level``."""
        tokens = codes + self.vocab.level_slice(level).start
        return self.gru(self.dropout(self.code_embedding(tokens)), state)

    def score(self, state: Tensor, level: int) -> Tensor:
        """Logits (R, V_level) of the next code at ``level``."""
        return self.heads[level](self.dropout(state))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Loss (generative + disc_weight * discriminative) and logits (B, L, max V), -inf padded."""
        target = batch["target_codes"]  # (B, L)
        state = self.initial_state(batch["query"])
        logits = []
        for level in range(self.vocab.levels):
            if level > 0:
                state = self.next_state(state, target[:, level - 1], level - 1)
            logits.append(self.score(state, level))
        loss = torch.stack([F.cross_entropy(x, target[:, i]) for i, x in enumerate(logits)]).mean()
        if self.config.disc_weight > 0:
            loss = loss + self.config.disc_weight * discriminative_loss(
                logits, target, batch.get("labels")
            )
        if self.image_head is not None:
            if "image" not in batch:
                raise SemidError("an AVG with an image head trains on batches with image features")
            loss = loss + self.config.item_loss * self.image_head(batch)[0]
        width = max(self.vocab.codebook_sizes)
        padded = torch.stack(
            [F.pad(x, (0, width - x.shape[1]), value=float("-inf")) for x in logits], 1
        )
        return loss, padded

    def set_items_(self, features: Tensor) -> None:
        """Image features (N, image_dim) of the index's images, row i = index row i."""
        if features.ndim != 2 or features.shape[1] != self.config.image_dim:
            raise SemidError(
                f"image features must be (N, {self.config.image_dim}), got {tuple(features.shape)}"
            )
        self.items = features.float().to(self.heads[0].weight.device)
        self._image_cache = None

    def has_item_head(self) -> bool:
        """True with an image head (``image_dim`` and ``item_loss`` > 0) and the images' features set."""
        return self.image_head is not None and len(self.items) > 0

    @torch.no_grad()
    def item_log_probs(self, inputs: Tensor) -> Tensor:
        """log p(image) (B, N) over the indexed images (``set_items_``) for query embeddings (B, T)."""
        with self.evaluating():
            queries = self.image_head.embed_queries(inputs)
            images = self._indexed_images()
        return torch.log_softmax(queries @ images.T / self.config.temperature, dim=-1)

    def _indexed_images(self) -> Tensor:
        """The image tower's embeddings (N, d) of the indexed images, computed once per state of
        the tower's weights and of ``items``: the key is their tensors' version counters (any
        in-place change, an optimizer step or ``load_state_dict``, bumps them) and identities."""
        tensors = [self.items, *self.image_head.parameters()]
        key = tuple(x for t in tensors for x in (id(t), t._version, t.device, t.dtype))
        if self._image_cache is None or self._image_cache[0] != key:
            self._image_cache = (key, self.image_head.embed_images(self.items))
        return self._image_cache[1]

    def step_model(self) -> _AvgSteps:
        """Beam-search adapter: the query is encoded once; the state is one vector per beam."""
        return _AvgSteps(self)


class _AvgSteps:
    """StepModel over `Avg`: inputs are query embeddings (B, query_dim)."""

    def __init__(self, model: Avg) -> None:
        self.model = model

    def start(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """First-level logits (B, V_0) and the initial states (B, d_model)."""
        state = self.model.initial_state(inputs)
        return self.model.score(state, 0), state

    def step(self, state: Tensor, codes: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Read the codes (R,) of ``level - 1``; logits (R, V_level) and the new states."""
        state = self.model.next_state(state, codes, level - 1)
        return self.model.score(state, level), state

    def select(self, state: Tensor, rows: Tensor) -> Tensor:
        """States of the given rows (R_new,)."""
        return state[rows]


def discriminative_loss(logits: list[Tensor], target: Tensor, labels: Tensor | None) -> Tensor:
    """In-batch ranking loss over next vokens, averaged over levels.

    logits[l] (B, V_l) are teacher-forced on each query's own target prefix; target (B, L). At
    level l, query b scores the level-l code of every in-batch target j that shares b's target
    prefix (all targets at level 0); the loss is -log of the softmax share of the relevant j."""
    if labels is not None:
        positive = labels[:, None] == labels[None, :]
    else:
        positive = (target[:, None, :] == target[None, :, :]).all(-1)
    candidate = torch.ones_like(positive)
    losses = []
    for level, level_logits in enumerate(logits):
        scores = level_logits.log_softmax(-1)[:, target[:, level]]  # (B, B): query b, candidate j
        relevant = scores.masked_fill(~(candidate & positive), float("-inf")).logsumexp(-1)
        everyone = scores.masked_fill(~candidate, float("-inf")).logsumexp(-1)
        losses.append((everyone - relevant).mean())  # j = b is always a relevant candidate
        candidate = candidate & (target[:, None, level] == target[None, :, level])
    return torch.stack(losses).mean()
