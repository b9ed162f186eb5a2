"""MMGRec (Liu et al., 2024): relation-aware self-attention over the history, then a decoder that writes
the next item's Rec-ID (semantic ID, ideally from ``graph_rqvae`` with the popularity collision
strategy) one code per step under the trie.

Encoder: each history item is the sum of its code embeddings. There is no absolute position
encoding; instead every attention score between items i and j gets learned per-head biases for
their pairwise relations (``relations``, any subset of):

- ``time``: log-scale bucket of the time gap |t_i - t_j| (seconds; 0 s, < 2 s, < 4 s, ... doubling);
- ``distance``: how many interactions apart the two items are (clipped at ``max_distance``, by
  default the history length: a 200-item history gets distances up to 200);
- ``prefix``: the length of the ID prefix the two items share (0..L), a semantic relation that is
  free to compute from the codes;
- ``cooccur``: how often the two items co-occur in the training sequences (within
  ``cooccur_window`` events of each other; log2 buckets), MMGRec's co-occurrence relation. Each
  item keeps its ``cooccur_neighbours`` most frequent neighbours (:mod:`semid.cooccurrence`),
  fitted from the training data before training (:meth:`MMGRec.fit_train_sequences_`); items
  added later have none.

With ``item_embeddings`` (``--model-config '{"item_embeddings": true}'``, which sets ``num_items`` to
the index size) each history item also gets its own learned vector, as dense sequential models have;
items added later with ``semid index add`` have none and enter through their codes alone.

Item head (``item_loss`` > 0, the default; it turns ``item_embeddings`` on): the last history state is also
scored against the item embeddings above (tied with the input, as in SASRec), a full softmax over
index rows trained as an auxiliary loss weighted ``item_loss``. Ranking then mixes both
views (:class:`semid.hybrid.HybridRanker`): log p(ID) + ``item_mix`` * log p(item) over the beams
and the head's top rows; ``item_mix`` is chosen on the valid split after training.

Causal attention lets one forward train on every position of a history window (``train_format =
"sequence"``). Decoder: a small causal Transformer over [h_t, code_0, ..., code_{L-2}] whose output
at step l is scored against the level-l code embeddings (tied with the encoder's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from semid.cooccurrence import NO_NEIGHBOUR, neighbour_table, pair_counts
from semid.dropout import BitDropout
from semid.errors import SemidError
from semid.generator import Generator, register_generator
from semid.item_softmax import item_cross_entropy
from semid.layers import SelfAttentionBlock, causal_bias, gather_rows
from semid.vocab import CodeVocabulary

if TYPE_CHECKING:
    from semid.ids import SemanticIDs

RELATIONS = ("time", "distance", "prefix", "cooccur")
DEFAULT_MAX_DISTANCE = 50  # the recommend task's default history length


@dataclass
class MMGRecConfig:
    """MMGRec hyper-parameters."""

    LIMITS: ClassVar = {**dict.fromkeys(("dim", "heads", "layers", "decoder_layers", "ff_mult",
                                         "time_buckets"), "count"),
                        "dropout": "probability", "item_loss": "non-negative", "item_mix": "non-negative"}  # fmt: skip
    DIVIDES: ClassVar = ("dim", "heads")

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    relations: list[str] = field(default_factory=lambda: ["time", "distance", "prefix"])
    dim: int = 64
    heads: int = 2
    layers: int = 2
    decoder_layers: int = 1
    dropout: float = 0.2
    ff_mult: int = 4
    time_buckets: int = 32  # log2 buckets of the gap in seconds: 2**31 s is ~68 years
    # distances clip here; None: the task's history length (sized_for), 50 without a task
    max_distance: int | None = None
    cooccur_window: int = 8  # events apart that still count as co-occurring
    cooccur_neighbours: int = 32  # neighbours kept per item
    cooccur_buckets: int = 16  # 0: not a kept neighbour; b > 0: count in [2**(b-1), 2**b)
    cooccur_items: int = 0  # rows of the neighbour table; set from the index (cooccur relation)
    trie_softmax: bool = (
        True  # softmax over the codes the index allows after each prefix (see Generator.use_trie)
    )
    # True: also learn one embedding per index row, added to the code sum; rows added later
    # (cold-start items) have none and are represented by their codes alone
    item_embeddings: bool = False
    num_items: int = 0  # rows with an embedding; set from the index (item_embeddings or item_loss)
    # > 0: weight of an auxiliary full-softmax loss over index rows (the item head, scored against
    # the item embeddings, which it turns on); 0: no head. 1.0: the best valid NDCG@10 on ml-100k
    # (benchmarks/results/recommend-hybrid.md)
    item_loss: float = 1.0
    # ranking score log p(ID) + item_mix * log p(item) (with a head); set on the valid split after training
    item_mix: float = 1.0


@register_generator("mmgrec")
class MMGRec(Generator):
    """Relation-aware causal encoder + autoregressive Rec-ID decoder; trains on whole history windows."""

    config_class = MMGRecConfig
    train_format = "sequence"
    saved_defaults = {"item_loss": 0.0}  # runs saved before the item head existed have none

    def __init__(self, config: MMGRecConfig) -> None:
        super().__init__(config)
        unknown = set(config.relations) - set(RELATIONS)
        if unknown:
            raise SemidError(f"unknown MMGRec relations {sorted(unknown)}; choose from {RELATIONS}")
        if (
            "cooccur" in config.relations
            and min(config.cooccur_window, config.cooccur_neighbours) < 1
        ):
            raise SemidError(
                f"cooccur_window and cooccur_neighbours must be at least 1 (got {config.cooccur_window} "
                f"and {config.cooccur_neighbours}); set them so in the model config"
            )
        if "cooccur" in config.relations and config.cooccur_buckets < 2:
            raise SemidError(
                f"cooccur_buckets must be at least 2 (got {config.cooccur_buckets}; bucket 0 means "
                "no co-occurrence); set it so in the model config"
            )
        c = config
        self.max_distance = DEFAULT_MAX_DISTANCE if c.max_distance is None else c.max_distance
        if self.max_distance < 1:
            raise SemidError(
                f"max_distance must be at least 1 (got {c.max_distance}); set it so in the model "
                "config, or leave it out to clip distances at the history length"
            )
        self._encodings: list[tuple[tuple, Tensor]] | None = None  # see encoding_once
        self.vocab = CodeVocabulary(c.codebook_sizes)
        # each level's first token, moved with the model (not made per decoding step); not saved
        self.register_buffer("level_offsets", torch.tensor(self.vocab.offsets), persistent=False)
        self.code_emb = nn.Embedding(self.vocab.size, c.dim)
        nn.init.normal_(self.code_emb.weight, std=0.02)
        self.item_emb = nn.Embedding(c.num_items, c.dim) if c.num_items > 0 else None
        if self.item_emb is not None:
            nn.init.normal_(self.item_emb.weight, std=0.02)
        sizes = {
            "time": c.time_buckets,
            "distance": self.max_distance + 1,
            "prefix": self.vocab.levels + 1,
            "cooccur": c.cooccur_buckets,
        }
        self.relation_emb = nn.ModuleDict({r: nn.Embedding(sizes[r], c.heads) for r in c.relations})
        for emb in self.relation_emb.values():
            nn.init.zeros_(emb.weight)
        if "cooccur" in c.relations:  # filled by fit_train_sequences_; saved with the weights
            table = (c.cooccur_items, c.cooccur_neighbours)
            self.register_buffer("cooccur_rows", torch.full(table, NO_NEIGHBOUR, dtype=torch.long))
            self.register_buffer("cooccur_counts", torch.zeros(table, dtype=torch.long))
        self.encoder = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.heads, c.dropout, c.ff_mult) for _ in range(c.layers)
        )
        self.decoder = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.heads, c.dropout, c.ff_mult)
            for _ in range(c.decoder_layers)
        )
        self.level_emb = nn.Embedding(self.vocab.levels, c.dim)
        self.ln_enc, self.ln_dec, self.drop = (
            nn.LayerNorm(c.dim),
            nn.LayerNorm(c.dim),
            BitDropout(c.dropout),
        )

    SIZED_FIELDS: ClassVar[dict[str, str]] = {
        **Generator.SIZED_FIELDS,
        "num_items": "the index",
        "cooccur_items": "the index",
    }

    @classmethod
    def sized_for(
        cls, config: MMGRecConfig, ids: SemanticIDs, extra_codes: int = 0, **context: object
    ) -> MMGRecConfig:
        """Codebook sizes from the index, one item embedding per row if ``item_embeddings`` or
        ``item_loss``, a neighbour-table row per item with the ``cooccur`` relation, and
        ``max_distance`` the history length ``max_history`` (from the task) unless set."""
        config = super().sized_for(config, ids, extra_codes)
        per_item = config.item_embeddings or config.item_loss > 0
        max_distance = config.max_distance
        if max_distance is None:
            max_distance = context.get("max_history") or DEFAULT_MAX_DISTANCE
        return replace(
            config,
            num_items=len(ids) if per_item else 0,
            cooccur_items=len(ids) if "cooccur" in config.relations else 0,
            max_distance=max_distance,
        )

    def fit_train_sequences_(self, items: Tensor, ptr: Tensor) -> None:
        """Fit the ``cooccur`` relation's neighbour table from the training sequences: index rows
        ``items`` (E,) of every user's train events, user u's being ``items[ptr[u]:ptr[u + 1]]``
        in time order. Nothing to fit without that relation."""
        if "cooccur" not in self.config.relations:
            return
        c = self.config
        rows, counts = neighbour_table(
            items, ptr, c.cooccur_items, c.cooccur_window, c.cooccur_neighbours
        )
        self.cooccur_rows.copy_(rows)
        self.cooccur_counts.copy_(counts)

    def embed_items(self, codes: Tensor, items: Tensor | None = None) -> Tensor:
        """Item vectors (..., D): the sum of code embeddings of codes (..., L), plus each index row's
        own embedding (rows ``items`` (...)) when ``num_items`` > 0; zero for PAD (-1) rows."""
        real = codes[..., :1] >= 0
        x = self.code_emb(self.vocab.codes_to_tokens(codes.clamp(min=0))).sum(-2)
        if self.item_emb is not None and items is not None:
            known = (items >= 0) & (items < self.config.num_items)
            x = x + self.item_emb(items.clamp(0, self.config.num_items - 1)) * known[..., None]
        return x * real

    def relation_bias(self, codes: Tensor, times: Tensor, items: Tensor | None = None) -> Tensor:
        """Additive attention bias (B, H, T, T): learned relation biases plus the causal/padding mask.
        ``items`` (B, T): the history's index rows (the ``cooccur`` relation needs them)."""
        t = codes.shape[1]
        bias = causal_bias(codes[..., 0]).expand(-1, self.config.heads, -1, -1)
        if "time" in self.relation_emb:
            gap = (times[:, :, None] - times[:, None, :]).abs().clamp(min=0).float()
            bucket = torch.log2(gap + 1).ceil().long().clamp(max=self.config.time_buckets - 1)
            bias = bias + rearrange(self._relation("time", bucket), "b i j h -> b h i j")
        if "distance" in self.relation_emb:
            pos = torch.arange(t, device=codes.device)
            dist = (pos[:, None] - pos[None, :]).abs().clamp(max=self.max_distance)
            bias = bias + rearrange(self._relation("distance", dist), "i j h -> 1 h i j")
        if "prefix" in self.relation_emb:
            same = (
                (codes[:, :, None, :] == codes[:, None, :, :]).long().cumprod(-1).sum(-1)
            )  # (B, T, T)
            bias = bias + rearrange(self._relation("prefix", same), "b i j h -> b h i j")
        if "cooccur" in self.relation_emb and items is not None:
            counts = pair_counts(self.cooccur_rows, self.cooccur_counts, items)
            bucket = torch.where(counts > 0, torch.log2(counts.clamp(min=1).float()).long() + 1, 0)
            bucket = bucket.clamp(max=self.config.cooccur_buckets - 1)
            bias = bias + rearrange(self._relation("cooccur", bucket), "b i j h -> b h i j")
        return bias

    def _relation(self, name: str, bucket: Tensor) -> Tensor:
        """Per-head biases (..., H) of relation ``name`` for buckets (...)."""
        return gather_rows(self.relation_emb[name].weight, bucket)

    @contextlib.contextmanager
    def encoding_once(self) -> Iterator[None]:
        """Inside the block, :meth:`encode` in eval mode answers repeated calls on the same input
        tensors from the first call (a mixed ranking encodes each history once, not three times)."""
        outer = self._encodings
        self._encodings = [] if outer is None else outer
        try:
            yield
        finally:
            self._encodings = outer

    def encode(
        self, codes: Tensor, times: Tensor, items: Tensor | None = None, last_only: bool = False
    ) -> Tensor:
        """Hidden states (B, T, D) of histories given as codes (B, T, L), times (B, T) and index
        rows (B, T); ``last_only``: the last position's only, (B, 1, D), at less cost."""
        if self._encodings is None or self.training:
            return self._encode(codes, times, items, last_only)
        for inputs, hidden in self._encodings:  # the same tensor objects: the same encoding
            if all(a is b for a, b in zip(inputs, (codes, times, items, last_only), strict=True)):
                return hidden
        hidden = self._encode(codes, times, items, last_only)
        self._encodings.append(((codes, times, items, last_only), hidden))
        return hidden

    def _encode(
        self, codes: Tensor, times: Tensor, items: Tensor | None, last_only: bool
    ) -> Tensor:
        x = self.drop(self.embed_items(codes, items) * self.config.dim**0.5)
        bias = self.relation_bias(codes, times, items)
        for i, block in enumerate(self.encoder):
            x = block(x, bias, last_only=last_only and i == len(self.encoder) - 1)
        return self.ln_enc(x)

    def decode(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """Decoder outputs (R, S, D) for token vectors (R, S, D): [h, code_0, ..., code_{S-2}];
        ``last_only``: the last token's only, (R, 1, D)."""
        x = tokens + self.level_emb.weight[: tokens.shape[1]]
        bias = causal_bias(torch.zeros(tokens.shape[:2], dtype=torch.long, device=tokens.device))
        for i, block in enumerate(self.decoder):
            x = block(x, bias, last_only=last_only and i == len(self.decoder) - 1)
        return self.ln_dec(x)

    def level_logits(self, out: Tensor, level: int) -> Tensor:
        """Logits (..., V_level) of decoder outputs (..., D), tied with the level's code embeddings."""
        return out @ self.code_emb.weight[self.vocab.level_slice(level)].T

    def prefix_tokens(self, hidden: Tensor, codes: Tensor) -> Tensor:
        """Decoder input (R, 1 + l, D): the history state (R, D), then embeddings of codes (R, l)."""
        levels = codes.shape[1]
        if levels == 0:
            return hidden[:, None]
        tokens = codes + self.level_offsets[:levels]
        return torch.cat([hidden[:, None], self.code_emb(tokens)], dim=1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced code cross-entropy at every position that has a next item -> (loss, logits of level 0)."""
        hidden = self.encode(
            batch["history_codes"], batch["times"], batch.get("items")
        )  # (B, T, D)
        target = batch["next_codes"]  # (B, T, L)
        real = target[..., 0] >= 0
        hidden, target = hidden[real], target[real]  # (R, D), (R, L)
        out = self.decode(self.prefix_tokens(hidden, target[:, :-1]))  # (R, L, D)
        logits = [self.level_logits(out[:, level], level) for level in range(self.vocab.levels)]
        loss = self.level_loss(logits, target)
        if self.has_item_head():
            rows = batch["next_items"][real]  # (R,) index rows of the targets
            loss = loss + self.config.item_loss * item_cross_entropy(
                hidden, self.item_emb.weight, rows
            )
        return loss, logits[0]

    def has_item_head(self) -> bool:
        """True when trained with the auxiliary item loss (``item_loss`` > 0)."""
        return self.config.item_loss > 0 and self.item_emb is not None

    def item_logits(self, hidden: Tensor) -> Tensor:
        """Item-head logits (..., num_items) of history states (..., D)."""
        return hidden @ self.item_emb.weight.T

    @torch.no_grad()
    def item_log_probs(self, inputs: dict[str, Tensor]) -> Tensor:
        """Item-head log-probabilities (B, num_items) after each history's last position."""
        with self.evaluating():
            hidden = self.encode(
                inputs["history_codes"], inputs["times"], inputs.get("items"), last_only=True
            )
        return torch.log_softmax(self.item_logits(hidden[:, -1]).float(), dim=-1)

    def step_model(self) -> _MMGRecSteps:
        """Beam-search adapter: encode once per query, then re-run the short decoder on each prefix."""
        return _MMGRecSteps(self)


@dataclass
class _State:
    hidden: Tensor  # (R, D) last history state of each row's query
    codes: Tensor  # (R, l) codes chosen so far


class _MMGRecSteps:
    """StepModel for MMGRec. The decoder sequence is at most L tokens, so no KV cache is kept."""

    def __init__(self, model: MMGRec) -> None:
        self.model = model

    @torch.no_grad()
    def start(self, inputs: dict[str, Tensor]) -> tuple[Tensor, _State]:
        """Encode B histories once -> level-0 logits (B, V_0) and a B-row state."""
        hidden = self.model.encode(
            inputs["history_codes"], inputs["times"], inputs.get("items"), last_only=True
        )[:, -1]
        state = _State(hidden, hidden.new_zeros(hidden.shape[0], 0, dtype=torch.long))
        return self._logits(state), state

    @torch.no_grad()
    def step(self, state: _State, codes: Tensor, level: int) -> tuple[Tensor, _State]:
        """Append codes (R,) of level-1 -> logits (R, V_level)."""
        state = _State(state.hidden, torch.cat([state.codes, codes[:, None].long()], dim=1))
        return self._logits(state), state

    def select(self, state: _State, rows: Tensor) -> _State:
        """Rows of the new state are old rows ``rows`` (R_new,)."""
        return _State(state.hidden[rows], state.codes[rows])

    def _logits(self, state: _State) -> Tensor:
        level = state.codes.shape[1]
        out = self.model.decode(self.model.prefix_tokens(state.hidden, state.codes), last_only=True)
        return self.model.level_logits(out[:, -1], level)
