"""PromptDSI (Huynh et al., 2024): a frozen pretrained encoder with a topic-aware prompt pool,
feeding a small decoder trained from scratch that writes the document's semantic ID under the trie.

The encoder (the packaged MiniLM by default, loaded with ``transformers``) never trains. Prompts
enter before encoder layer ``prompt_layer``: the layers below do not see them, so their output is
computed once per text and can be cached (``lower_states``); with ``prompt_layer=0`` the prompts
are prepended to the embedding output, i.e. to the encoder's input. Each input picks ``top_n``
prompts by cosine between its mean-pooled lower states (already computed: no extra encoder pass),
centred on the initial corpus's mean (``key_center``: uncentred, every text points along one shared
direction and selection hardly depends on the topic), and fixed topic keys (k-means centroids of the
documents' centred vectors, so keys cannot collapse). Incremental
indexing adds a new prompt session with keys from the new documents and trains only its prompts.

Centroid logits (``centroid_levels > 0``): when the IDs come from residual k-means over the same
encoder's sentence embeddings, the first ``centroid_levels`` levels also score each code by the
negative squared distance between the query's residual and the level's centroid: the query vector is
the mean-pooled prompted top layer (the encoder's own sentence embedding when prompts change
nothing), and each chosen code's centroid is subtracted before the next level; a learned scale per
level sets the temperature. The decoder's learned logits serve the levels after them (the collision
level), normalised over the codes the trie allows there; with ``decoder_on_centroid_levels`` they
also add to the centroid logits (zero-initialised head). Retrieval so starts from nearest-centroid
search instead of from chance, and the centroids are fixed buffers, so documents added later find
their IDs through them without retraining. On debian-docs the learned logits at centroid levels
overfit the training queries (R@1 on held-out queries fell from 0.71 to 0.54 in 4 epochs).

Document head (``rank_loss > 0``, the default): the query's own frozen sentence embedding passes a
learned residual adapter (a linear map, zero-initialised, so it starts as the identity) and is
compared by scaled cosine with the frozen embeddings of every indexed document (``set_documents_``,
kept beside the index, not in ``state_dict``); a softmax ranking loss over all documents trains it
on the query examples. The same adapted vector drives the centroid head, so training moves the
beams too. At search, :class:`semid.hybrid.HybridRanker` mixes log p(ID) with the head's
log p(document) (``item_mix``) and, when the batch carries them, BM25 log-probs (``lexical_mix``);
documents added later are scored through their frozen embeddings without retraining.

The frozen encoder is not part of ``state_dict``: it is loaded from ``encoder_path`` (or rebuilt
from ``encoder_config`` and ``encoder_seed``), so saved models hold only what was trained.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from semid.beam_search import rows_grouped_by_query
from semid.encoders import check_tokenizer_vocabulary, model_load_errors
from semid.errors import SemidError
from semid.generator import Generator, mean_level_cross_entropy, register_generator
from semid.generators.promptdsi_layers import (
    DecoderLayer,
    default_encoder_path,
    load_encoder,
    masked_mean,
)
from semid.vocab import CodeVocabulary

if TYPE_CHECKING:  # imported where it is used: it loads transformers
    from transformers import PreTrainedTokenizerBase

BOS_TOKEN = 0


@dataclass
class PromptDSIConfig:
    """PromptDSI hyper-parameters; the defaults fit the packaged MiniLM and train on a CPU."""

    LIMITS: ClassVar = {**dict.fromkeys(("max_length", "prompt_length", "top_n", "d_model", "num_heads",
                                         "num_layers", "d_ff"), "count"),
                        **dict.fromkeys(("prompt_layer", "rank_loss", "item_mix", "lexical_mix"), "non-negative"),
                        "dropout": "probability", "centroid_scale": "positive", "rank_scale": "positive"}  # fmt: skip
    DIVIDES: ClassVar = ("d_model", "num_heads")

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    encoder_path: str | None = None  # local HF folder; None: the packaged all-MiniLM-L6-v2
    encoder_config: dict | None = None  # BertConfig fields: a random frozen encoder (tests) instead
    encoder_seed: int = 0  # seeds the random encoder so it is rebuilt identically on load
    max_length: int = 128  # tokens per text, truncated (to the encoder's positions at most)
    prompt_layer: int = 0  # prompts enter before this encoder layer (0: at the input embeddings)
    prompt_length: int = 4  # tokens per prompt
    pool_sizes: list[int] = field(
        default_factory=lambda: [16]
    )  # prompts per session (0: initial corpus)
    top_n: int = 2  # prompts selected per input
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 1024
    dropout: float = 0.1
    # leading levels also scored by quantizer centroids (set_centroids_); None: the task picks
    # every level its quantizer's centroids allow (a model built directly treats None as 0)
    centroid_levels: int | None = None
    centroid_scale: float = 5.0  # initial inverse temperature of the centroid logits
    # True: the decoder's learned logits add to the centroid logits (measured worse: it overfits)
    decoder_on_centroid_levels: bool = False
    # levels after the centroid levels (the collision level) normalise over the codes the trie allows
    # (loss with a trie from use_trie, and search), so unique IDs pay nothing there
    trie_softmax_after_centroids: bool = True
    # weight of the document-ranking loss: the query vector (through a learned residual adapter)
    # against the frozen embeddings of every indexed document, softmax over all of them (0: no
    # adapter, no document head)
    rank_loss: float = 1.0
    rank_scale: float = 20.0  # initial inverse temperature of the document scores (learned)
    # ranking score log p(ID) + item_mix * log p(document) over the beams and the head's top rows
    # (semid.hybrid.HybridRanker); set on held-out training queries after training
    item_mix: float = 1.0
    # + lexical_mix * log p_lex(document) (BM25 of the query text, semid.lexical), chosen with item_mix
    lexical_mix: float = 0.0


@register_generator("promptdsi")
class PromptDSI(Generator):
    """Frozen encoder + topic-keyed prompt pool + small code decoder. ``forward`` needs
    ``hidden`` (B, T, H) lower states (or ``input_ids``), ``attention_mask`` (B, T), ``target_codes`` (B, L)."""

    config_class = PromptDSIConfig
    saved_defaults = {"rank_loss": 0.0}  # runs saved before the document head existed have none

    def __init__(self, config: PromptDSIConfig) -> None:
        config = replace(config, centroid_levels=config.centroid_levels or 0)
        super().__init__(config)
        encoder = load_encoder(config).eval().requires_grad_(False)
        self._frozen = [encoder]  # a list hides it from state_dict and parameters(); see _apply
        width = encoder.config.hidden_size
        if not 0 <= config.prompt_layer < encoder.config.num_hidden_layers:
            raise SemidError(
                f"prompt_layer={config.prompt_layer} but the encoder has {encoder.config.num_hidden_layers} layers; "
                f"pick 0..{encoder.config.num_hidden_layers - 1}"
            )
        if not config.pool_sizes or min(config.pool_sizes) < 1:
            raise SemidError(f"pool_sizes={list(config.pool_sizes)} must hold at least one "
                             "prompt per session, e.g. [32]")  # fmt: skip
        if not 1 <= config.top_n <= sum(config.pool_sizes):
            raise SemidError(
                f"top_n={config.top_n} must be between 1 and the pool size {sum(config.pool_sizes)}"
            )
        scale = float(encoder.embeddings.word_embeddings.weight.std())
        self.prompts = nn.ParameterList(
            [
                nn.Parameter(torch.randn(m, config.prompt_length, width) * scale)
                for m in config.pool_sizes
            ]
        )
        self.register_buffer(
            "topic_keys", F.normalize(torch.randn(sum(config.pool_sizes), width), dim=-1)
        )
        self.register_buffer("key_center", torch.zeros(width))  # subtracted before matching
        self.vocab = CodeVocabulary(config.codebook_sizes, num_special=1)
        d = config.d_model
        self.memory_proj = nn.Sequential(nn.Linear(width, d), nn.LayerNorm(d))
        self.token_emb = nn.Embedding(self.vocab.size, d)
        self.pos_emb = nn.Embedding(len(config.codebook_sizes), d)
        self.layers = nn.ModuleList(
            [
                DecoderLayer(d, config.num_heads, config.d_ff, config.dropout)
                for _ in range(config.num_layers)
            ]
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab.size)
        self._init_centroid_head(config, width)
        self._init_document_head(config, width)

    def _init_document_head(self, config: PromptDSIConfig, width: int) -> None:
        if min(config.rank_loss, config.item_mix, config.lexical_mix) < 0:
            raise SemidError(f"rank_loss, item_mix and lexical_mix must be >= 0, got {config.rank_loss}, "
                             f"{config.item_mix}, {config.lexical_mix}")  # fmt: skip
        self.query_adapter: nn.Linear | None = None
        self.register_buffer("documents", torch.zeros(0, width), persistent=False)
        if config.rank_loss == 0:
            return
        self.query_adapter = nn.Linear(width, width)
        # starts as the identity: the encoder's own vector
        nn.init.zeros_(self.query_adapter.weight)
        nn.init.zeros_(self.query_adapter.bias)
        self.rank_log_scale = nn.Parameter(torch.tensor(math.log(config.rank_scale)))

    def _init_centroid_head(self, config: PromptDSIConfig, width: int) -> None:
        levels = config.centroid_levels
        if not 0 <= levels <= len(config.codebook_sizes):
            raise SemidError(
                f"centroid_levels={levels} must be between 0 and the {len(config.codebook_sizes)} code levels"
            )
        if levels == 0:
            return
        k = config.codebook_sizes[0]
        if any(s != k for s in config.codebook_sizes[:levels]):
            raise SemidError(
                f"centroid levels need equal codebook sizes, got {config.codebook_sizes[:levels]}"
            )
        self.register_buffer("centroids", torch.zeros(levels, k, width))
        self.centroid_log_scale = nn.Parameter(
            torch.full((levels,), math.log(config.centroid_scale))
        )
        nn.init.zeros_(self.head.weight)  # learned logits start at 0: centroids decide at first
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------ frozen encoder
    @property
    def encoder(self) -> nn.Module:
        """The frozen pretrained encoder (not trained, not saved)."""
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), ... also reach the hidden encoder
        super()._apply(fn, recurse)
        self._frozen[0]._apply(fn)
        return self

    def train(self, mode: bool = True) -> PromptDSI:
        """Train mode for prompts and decoder; the encoder stays in eval mode (cached states stay exact)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The encoder's tokenizer (the packaged MiniLM's for a random test encoder)."""
        if not hasattr(self, "_tokenizer"):
            from transformers import AutoTokenizer

            path = self.config.encoder_path or str(default_encoder_path())
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except model_load_errors() as e:
                raise SemidError(f"cannot load the PromptDSI tokenizer from {path}: {e}; pass a "
                                 "local model folder") from None  # fmt: skip
            if self.config.encoder_config is None:  # a random test encoder has its own vocabulary
                check_tokenizer_vocabulary(tokenizer, self.encoder.config.vocab_size, path)
            self._tokenizer = tokenizer
        return self._tokenizer

    def token_limit(self) -> int:
        """The tokens a text is read up to (special tokens included): ``max_length``, or the
        encoder's positions when it has fewer."""
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        return min(self.config.max_length, positions or self.config.max_length)

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, T), truncated to max_length, and to the encoder's
        positions when it has fewer (a text longer than those would crash it)."""
        enc = self.tokenizer()(
            texts, padding=True, truncation=True, max_length=self.token_limit(), return_tensors="pt"
        )
        device = self.head.weight.device
        return {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
        }

    def _run_layers(self, hidden: Tensor, mask: Tensor, layers: Any) -> Tensor:
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in layers:
            hidden = layer(hidden, attention_mask=additive)
        return hidden

    def _run_layers_by_length(self, hidden: Tensor, mask: Tensor, layers: Any) -> Tensor:
        """``_run_layers`` of right-padded rows (B, T, H), in two groups when a batch mixes long
        texts and short ones (documents and queries in training): the short rows run padded to
        their own longest, not to the batch's, when that saves a fifth of the padded tokens or
        more (a training batch of debian-docs documents and queries: half of the encoder's time).
        The outputs past a text's end are padding (zeros where the rows ran grouped)."""
        lengths = mask.sum(1)
        order = lengths.argsort(descending=True, stable=True)
        longest = lengths[order]
        rows = torch.arange(len(order), device=lengths.device)
        # tokens run if the rows from i on are padded to longest[i], the ones before to longest[0]
        cost = rows * longest[0] + (len(order) - rows) * longest
        cut = int(cost.argmin())
        if cut == 0 or 5 * int(cost[cut]) > 4 * len(order) * int(longest[0]):
            return self._run_layers(hidden, mask, layers)
        pieces = []
        for group in (order[:cut], order[cut:]):
            width = int(lengths[group].max())
            out = self._run_layers(hidden[group, :width], mask[group, :width], layers)
            pieces.append(F.pad(out, (0, 0, 0, hidden.shape[1] - width)))
        return torch.cat(pieces)[order.argsort()]

    @torch.no_grad()
    def lower_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Encoder states (B, T, H) entering layer prompt_layer: prompt-free, so cacheable per text."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return self._run_layers(
            hidden, attention_mask, self.encoder.encoder.layer[: self.config.prompt_layer]
        )

    @torch.no_grad()
    def text_embedding(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's own sentence embedding (B, H): no prompts, mean-pooled, L2-normalised."""
        out = self._run_layers(
            hidden, attention_mask, self.encoder.encoder.layer[self.config.prompt_layer :]
        )
        return F.normalize(masked_mean(out, attention_mask), dim=-1)

    # ------------------------------------------------------------ prompt pool
    def query_keys(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Matching vectors (B, H): mean-pooled lower states, L2-normalised, minus ``key_center``
        (the corpus mean, see ``set_key_center_``), normalised again (no extra encoder pass)."""
        pooled = F.normalize(masked_mean(hidden.float(), attention_mask), dim=-1)
        return F.normalize(pooled - self.key_center, dim=-1)

    def set_key_center_(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Centre prompt matching on the mean of the initial corpus's pooled lower states: without it
        every text shares one dominant direction and prompt selection barely depends on the topic.
        Takes (lower states (B, T, H), mask (B, T)) batches, one at a time (a generator keeps one
        padded batch in memory); set it before the session-0 keys."""
        pooled = [F.normalize(masked_mean(h.float(), m), dim=-1) for h, m in batches]
        if not pooled:
            raise SemidError("set_key_center_ needs at least one batch of lower states")
        self.key_center.copy_(torch.cat(pooled).mean(0).to(self.key_center))

    def select_prompts(self, query: Tensor) -> Tensor:
        """Indices (B, top_n) of the prompts whose topic keys best match query (B, H), best first."""
        return (query @ self.topic_keys.T).topk(self.config.top_n, dim=-1).indices

    def set_topic_keys_(self, keys: Tensor, session: int = 0) -> None:
        """Fix the topic keys (M_s, H) of a prompt session (e.g. k-means centroids of its documents)."""
        start = sum(self.config.pool_sizes[:session])
        size = self.config.pool_sizes[session]
        if keys.shape != (size, self.topic_keys.shape[1]):
            raise SemidError(
                f"session {session} needs keys of shape ({size}, {self.topic_keys.shape[1]}), got {tuple(keys.shape)}"
            )
        self.topic_keys[start : start + size] = F.normalize(keys.float(), dim=-1).to(
            self.topic_keys.device
        )

    def add_prompt_session_(self, keys: Tensor) -> int:
        """Add prompts keyed by keys (M, H); each starts as a copy of the prompt of its nearest old key.
        Returns the new session's number."""
        keys = F.normalize(keys.float().to(self.topic_keys.device), dim=-1)
        nearest = (keys @ self.topic_keys.T).argmax(dim=-1)
        init = torch.cat(list(self.prompts))[nearest].detach().clone()
        self.prompts.append(nn.Parameter(init))
        self.topic_keys = torch.cat([self.topic_keys, keys])
        self.config.pool_sizes.append(len(keys))
        return len(self.prompts) - 1

    def set_centroids_(self, codebooks: Tensor) -> None:
        """Copy residual k-means codebooks (centroid_levels, K, H) into the centroid head."""
        if self.config.centroid_levels == 0:
            raise SemidError("this model has centroid_levels=0; build it with centroid_levels set")
        if codebooks.shape != self.centroids.shape:
            raise SemidError(
                f"centroids need shape {tuple(self.centroids.shape)}, got {tuple(codebooks.shape)}"
            )
        self.centroids.copy_(codebooks.to(self.centroids))

    def set_documents_(self, embeddings: Tensor) -> None:
        """The frozen embeddings (N, H) of the index's documents, row i = index row i: the document
        head scores them (not saved with the model; the task keeps them beside the index)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.documents.shape[1]:
            raise SemidError(
                f"document embeddings must be (N, {self.documents.shape[1]}), got {tuple(embeddings.shape)}"
            )
        self.documents = F.normalize(embeddings.float(), dim=-1).to(self.documents.device)

    def has_item_head(self) -> bool:
        """True with a document head (``rank_loss`` > 0) and the documents' embeddings set."""
        return self.query_adapter is not None and len(self.documents) > 0

    def document_logits(self, query: Tensor) -> Tensor:
        """Scores (B, N) of every document for query vectors (B, H): scaled cosine."""
        return self.rank_log_scale.exp() * query @ self.documents.T

    @torch.no_grad()
    def item_log_probs(self, inputs: dict[str, Tensor]) -> Tensor:
        """log p(document) (B, N) over the indexed documents (``set_documents_``)."""
        with self.evaluating():
            _, _, query = self.encode_with_query(inputs)
        return torch.log_softmax(self.document_logits(query).float(), dim=-1)

    def train_only_session_(self, session: int) -> None:
        """Freeze every parameter except the prompts of ``session`` (incremental indexing)."""
        self.requires_grad_(False)
        self.prompts[session].requires_grad_(True)

    # ------------------------------------------------------------ encoder with prompts, decoder
    def encode(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Memory (B, S, d) and its mask (B, S) bool: prompts + upper encoder layers, projected."""
        memory, mask, _ = self.encode_with_query(inputs)
        return memory, mask

    def encode_with_query(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``encode`` plus the query vector (B, H) of the centroid and document heads (None without
        either). With a document head it is the encoder's own sentence embedding (``embedding`` in
        the inputs when cached, else computed) through the residual adapter, L2-normalised; without
        one, the prompted top layer mean-pooled."""
        mask = inputs["attention_mask"]
        hidden = inputs.get("hidden")
        if hidden is None:
            hidden = self.lower_states(inputs["input_ids"], mask)
        hidden = hidden.to(self.head.weight.dtype)
        chosen = torch.cat(list(self.prompts))[self.select_prompts(self.query_keys(hidden, mask))]
        prompts = rearrange(chosen, "b n p h -> b (n p) h")
        mask = torch.cat([mask.new_ones(prompts.shape[:2]), mask], dim=1)
        layers = self.encoder.encoder.layer[self.config.prompt_layer :]
        out = self._run_layers_by_length(torch.cat([prompts, hidden], dim=1), mask, layers)
        query = None
        if self.query_adapter is not None:  # the encoder's own sentence embedding, adapted
            base = inputs.get("embedding")
            if base is None:
                base = self.text_embedding(hidden, inputs["attention_mask"])
            base = base.to(self.query_adapter.weight)
            query = F.normalize(base + self.query_adapter(base), dim=-1)
        elif self.config.centroid_levels:
            n = prompts.shape[1]
            query = F.normalize(masked_mean(out[:, n:], mask[:, n:]).float(), dim=-1)
        return self.memory_proj(out), mask.bool(), query

    def centroid_logits(self, query: Tensor, prefix: Tensor, level: int) -> Tensor:
        """Level ``level`` logits (R, K) from centroids: -scale * |residual - centroid|^2 + const,
        where the residual is query (R, H) minus the centroids of the prefix codes (R, level).
        Float32 also under autocast: the logit is a small difference of large terms, which a bf16
        product would round away (GPU training's default)."""
        with torch.autocast(query.device.type, enabled=False):
            residual = query.float()
            for lv in range(level):
                residual = residual - self.centroids[lv][prefix[:, lv]]
            books = self.centroids[level]
            scale = self.centroid_log_scale[level].exp()
            return scale * (2 * residual @ books.T - (books * books).sum(-1))

    def add_centroid_logits(self, logits: Tensor, query: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) plus centroid logits at every centroid level, in float32
        (the head's are bf16 under autocast; the centroid logits are not rounded to them)."""
        logits = logits.float()
        extra = torch.zeros_like(logits)
        for lv in range(self.config.centroid_levels):
            extra[:, lv, self.vocab.level_slice(lv)] = self.centroid_logits(query, codes, lv)
        if not self.config.decoder_on_centroid_levels:
            logits = logits.clone()
            logits[:, : self.config.centroid_levels] = 0.0
        return logits + extra

    def decode(
        self, tokens: Tensor, kvs: list[tuple[Tensor, Tensor]], memory_mask: Tensor
    ) -> Tensor:
        """Decoder outputs (R, T, vocab) for token prefixes (R, T) starting with BOS."""
        x = self.token_emb(tokens) + self.pos_emb.weight[: tokens.shape[1]]
        for layer, kv in zip(self.layers, kvs, strict=True):
            x = layer(x, kv, memory_mask)
        return self.head(self.norm(x))

    def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention K/V of the memory."""
        return [layer.memory_kv(memory) for layer in self.layers]

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced loss, mean cross-entropy per level within its block -> (loss, logits (B, L, V))."""
        target = batch["target_codes"]
        memory, mask, query = self.encode_with_query(batch)
        tokens = self.vocab.codes_to_tokens(target)
        bos = torch.full_like(tokens[:, :1], BOS_TOKEN)
        logits = self.decode(torch.cat([bos, tokens[:, :-1]], dim=1), self.memory_kv(memory), mask)
        if self.config.centroid_levels:
            logits = self.add_centroid_logits(logits, query, target)
        unmasked = [logits[:, lv, self.vocab.level_slice(lv)] for lv in range(self.vocab.levels)]
        blocks = self.mask_to_trie(unmasked, target)
        if blocks is not unmasked:
            logits = logits.clone()  # return the masked logits, as the loss sees them
            for lv, block in enumerate(blocks):
                logits[:, lv, self.vocab.level_slice(lv)] = block
        loss = mean_level_cross_entropy(blocks, target)
        if self.has_item_head() and "targets" in batch:  # on query examples only (``is_query``)
            # weighted rather than selected: every step gives the head's parameters a gradient
            # (DDP in a launched job needs the same parameters used on every step) and no GPU sync
            is_query = batch.get("is_query")
            weight = (
                torch.ones(len(query), device=query.device)
                if is_query is None
                else is_query.float()
            )
            rank_ce = F.cross_entropy(
                self.document_logits(query), batch["targets"], reduction="none"
            )
            loss = loss + self.config.rank_loss * (
                rank_ce.float() * weight
            ).sum() / weight.sum().clamp(min=1)
        return loss, logits

    def trie_softmax_levels(self) -> range:
        """Levels whose softmax runs over the trie's allowed codes: those after the centroid levels
        (``trie_softmax_after_centroids``), so a unique ID pays nothing at its collision level."""
        if not (self.config.centroid_levels and self.config.trie_softmax_after_centroids):
            return range(0)
        return range(self.config.centroid_levels, len(self.config.codebook_sizes))

    def step_model(self) -> _PromptDSISteps:
        """Beam-search adapter: encode and cross-attention K/V once per query, prefixes per beam."""
        return _PromptDSISteps(self)


@dataclass
class _State:
    kvs: list[tuple[Tensor, Tensor]]  # per layer (B, h, S, d_h), or (R, ...) when per_row
    memory_mask: Tensor  # (B, S), or (R, S) when per_row
    tokens: Tensor  # (R, t) BOS + codes so far
    query: Tensor  # (R,) query of each row
    codes: Tensor  # (R, t - 1) codes so far
    vectors: Tensor | None  # (B, H) centroid query vector per query (None without centroids)
    per_row: bool = False  # K/V copied to every row (rows not grouped by query)


class _PromptDSISteps:
    """StepModel over PromptDSI; IDs are a few levels long, so each step re-reads the short prefix."""

    def __init__(self, model: PromptDSI) -> None:
        self.model = model

    @torch.no_grad()
    def start(self, inputs: dict[str, Tensor]) -> tuple[Tensor, _State]:
        """Encode B queries -> first-level logits (B, V_0), state."""
        memory, mask, vectors = self.model.encode_with_query(inputs)
        b = memory.shape[0]
        tokens = torch.full((b, 1), BOS_TOKEN, dtype=torch.long, device=memory.device)
        state = _State(
            self.model.memory_kv(memory),
            mask,
            tokens,
            torch.arange(b, device=memory.device),
            tokens[:, :0],
            vectors,
        )
        return self._logits(state, 0), state

    @torch.no_grad()
    def step(self, state: _State, codes: Tensor, level: int) -> tuple[Tensor, _State]:
        """Append codes (R,) of level - 1 -> logits (R, V_level)."""
        token = codes.long() + self.model.vocab.level_slice(level - 1).start
        state.tokens = torch.cat([state.tokens, token[:, None]], dim=1)
        state.codes = torch.cat([state.codes, codes.long()[:, None]], dim=1)
        return self._logits(state, level), state

    def _logits(self, state: _State, level: int) -> Tensor:
        out = self.model.decode(state.tokens, state.kvs, state.memory_mask)
        logits = out[:, -1, self.model.vocab.level_slice(level)].float()
        if state.vectors is not None and level < self.model.config.centroid_levels:
            query = state.vectors[state.query]
            if not self.model.config.decoder_on_centroid_levels:
                logits = torch.zeros_like(logits)
            logits = logits + self.model.centroid_logits(query, state.codes, level)
        return logits

    def select(self, state: _State, rows: Tensor) -> _State:
        """New row i = old row rows[i]. Cross-attention K/V depend only on the query and stay one
        row per query while the rows remain grouped by query (beam search's rows, and the
        candidates of ``score_codes``): the decoder layers attend each group to its query's copy.
        Rows that break the grouping get their own copies from then on."""
        query = state.query[rows]
        copy = None  # the rows of the K/V to copy out, if any
        if not state.per_row and not rows_grouped_by_query(query, state.memory_mask.shape[0]):
            copy, state.per_row = query, True  # each row's query, once
        elif state.per_row and not torch.equal(query, state.query):
            copy = rows  # rows that changed query (rows of one query share the same copy)
        if copy is not None:
            state.kvs = [(k.index_select(0, copy), v.index_select(0, copy)) for k, v in state.kvs]
            state.memory_mask = state.memory_mask.index_select(0, copy)
        state.tokens, state.codes, state.query = state.tokens[rows], state.codes[rows], query
        return state


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["PromptDSI", "PromptDSIConfig", "count_parameters", "masked_mean"]
