"""Hugging Face adapters: a trie LogitsProcessor for ``generate`` and a StepModel for our beam search."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from transformers import AttentionInterface, EncoderDecoderCache, LogitsProcessor
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_outputs import BaseModelOutput

from semid.beam_search import rows_grouped_by_query
from semid.errors import SemidError
from semid.trie import PrefixTrie
from semid.vocab import CodeVocabulary


def _check_match(trie: PrefixTrie, vocab: CodeVocabulary) -> None:
    if trie.codebook_sizes != vocab.codebook_sizes:
        raise SemidError(
            f"trie codebook sizes {trie.codebook_sizes} differ from the vocabulary's {vocab.codebook_sizes}; "
            "build both from the same index"
        )


class TrieLogitsProcessor(LogitsProcessor):
    """Constrain HF ``generate`` to IDs in ``trie``: scores (R, vocab.size) -> scores with -inf elsewhere.

    Stateless: each call walks the trie along the tokens generated so far (after ``prompt_length``
    decoder start tokens), so it is correct whatever beams HF reorders. Once all L levels are
    generated only ``eos_token_id`` is allowed (pass it when generating past L tokens).
    With ``level_normalize`` (default) the kept scores are re-normalized with a log-softmax over the
    level's own token block, so HF beam scores equal :func:`constrained_beam_search` log-probs;
    with False they stay HF's log-probs over the whole vocabulary. With ``trie_normalize`` the
    log-softmax is over the codes the trie allows only, as the native search of a generator trained
    with ``trie_softmax`` (:class:`semid.generator.TrieNormalizedSteps`) scores them.
    """

    def __init__(
        self,
        trie: PrefixTrie,
        vocab: CodeVocabulary,
        prompt_length: int = 1,
        eos_token_id: int | None = None,
        level_normalize: bool = True,
        trie_normalize: bool = False,
    ) -> None:
        _check_match(trie, vocab)
        if prompt_length < 0:
            raise ValueError(f"`prompt_length` must be >= 0, got {prompt_length}")
        self.trie, self.vocab = trie, vocab
        self.prompt_length, self.eos_token_id = prompt_length, eos_token_id
        self.level_normalize, self.trie_normalize = level_normalize, trie_normalize

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Mask scores (R, V) given input_ids (R, prompt_length + level)."""
        level = input_ids.shape[1] - self.prompt_length
        if level < 0:
            raise SemidError(
                f"got {input_ids.shape[1]} decoder tokens, fewer than prompt_length={self.prompt_length}"
            )
        keep = torch.zeros_like(scores, dtype=torch.bool)
        if level >= self.trie.levels:
            if self.eos_token_id is None:
                raise SemidError(
                    f"generating token {level + 1} of an ID with {self.trie.levels} levels; "
                    f"set max_new_tokens={self.trie.levels} or pass eos_token_id"
                )
            keep[:, self.eos_token_id] = True
            return scores.masked_fill(~keep, float("-inf"))
        generated = input_ids[:, self.prompt_length :]
        states = torch.zeros(input_ids.shape[0], dtype=torch.int64, device=input_ids.device)
        # a token of another level gives an out-of-range code, hence state -1
        for lvl in range(level):
            states = self.trie.advance(
                states, lvl, generated[:, lvl] - self.vocab.level_slice(lvl).start
            )
        block = self.vocab.level_slice(level)
        allowed = self.trie.allowed_mask(states, level)
        keep[:, block] = allowed
        if self.level_normalize or self.trie_normalize:
            scores, part = scores.clone(), scores[:, block].float()
            if self.trie_normalize:  # a row with no allowed code gets NaN here, masked below
                part = part.masked_fill(~allowed, float("-inf"))
            scores[:, block] = torch.log_softmax(part, dim=-1).to(scores.dtype)
        return scores.masked_fill(~keep, float("-inf"))


@dataclass
class Seq2SeqState:
    """Decoding state of R rows, grouped by query: rows [b * W, (b + 1) * W) belong to query b.

    The self-attention cache has one row per beam; encoder outputs and cross-attention K/V stay at
    one row per query (B), and each beam's cross-attention reads its query's row. Only when a
    caller's ``select`` breaks the grouping are they copied out to R rows (``per_row``)."""

    cache: (
        Any  # transformers EncoderDecoderCache: self-attention R rows, cross-attention B or R rows
    )
    encoder_hidden: Tensor  # (B, S, D), or (R, S, D) when per_row
    encoder_mask: Tensor  # (B, 1, 1, S) bool, or (R, 1, 1, S) when per_row
    query: Tensor  # (R,) the query each row belongs to
    per_row: bool = False  # cross-attention K/V copied to every row (rows not grouped by query)


def grouped_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """HF attention function where keys may hold fewer rows than queries: query (R, H, q, d) with
    R = B * W rows grouped by query, key and value (B, H, S, d) -> output (R, q, H, d).

    Each query's W beams become W * q positions of one attention call over its single copy of the
    keys, so cross-attention K/V are never copied per beam. Masks and biases broadcast over the
    group (a per-position one, size q > 1, is tiled over the W beams)."""
    rows, groups = query.shape[0], key.shape[0]
    beams = rows // groups
    bias = position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            base = (
                bias
                if bias is not None
                else torch.zeros((), dtype=query.dtype, device=query.device)
            )
            bias = torch.where(attention_mask, base, torch.finfo(query.dtype).min)
        else:
            bias = attention_mask if bias is None else bias + attention_mask
    if beams > 1:
        query = rearrange(query, "(b w) h q d -> b h (w q) d", w=beams)
        if bias is not None and bias.shape[-2] > 1:
            bias = bias.repeat(1, 1, beams, 1)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=bias,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
    )
    return rearrange(out, "b h (w q) d -> (b w) q h d", w=beams), None


def cache_field(model: Any) -> str:
    """The name of ``model``'s K/V cache, as its forward takes it and its output holds it:
    ``cache`` in newer transformers 5.x, ``past_key_values`` in older ones (5.17, for one)."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise SemidError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; "
        "Seq2SeqStepModel needs a model that returns its K/V cache"
    )


GROUPED_ATTENTION = "semid_grouped"
AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)


class Seq2SeqStepModel:
    """StepModel over any HF encoder-decoder (e.g. T5ForConditionalGeneration) whose vocabulary holds ``vocab``.

    Encoder outputs and cross-attention K/V are kept once per query: during our decoder steps the
    decoder's attention runs through :func:`grouped_attention`, so beam rows read their query's row.
    Call ``model.eval()`` first: dropout would make the scores random.
    """

    def __init__(self, model: Any, vocab: CodeVocabulary) -> None:
        if not getattr(model.config, "is_encoder_decoder", False):
            raise SemidError(
                f"{type(model).__name__} is not an encoder-decoder; Seq2SeqStepModel needs one (e.g. T5)"
            )
        model_vocab = model.get_output_embeddings().weight.shape[0]
        if model_vocab < vocab.size:
            raise SemidError(
                f"model vocabulary has {model_vocab} tokens but the code vocabulary needs {vocab.size}; "
                "build the model with vocab_size >= CodeVocabulary.size"
            )
        self.model, self.vocab = model, vocab
        self.decoder_start_token_id = model.config.decoder_start_token_id
        configs = (getattr(m, "config", None) for m in model.get_decoder().modules())
        self._decoder_configs = list({id(c): c for c in configs if c is not None}.values())
        self._cache_field = cache_field(model)

    def encode(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encoder outputs (B, S, D) and the key padding mask (B, S) of a batch of input_ids."""
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=mask)
        return hidden.last_hidden_state, mask

    @torch.no_grad()
    def start(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Seq2SeqState]:
        """Encode the batch once and run the first decoder step on B rows -> logits (B, V_0), state."""
        encoder_hidden, mask = self.encode(inputs)
        batch = encoder_hidden.shape[0]
        start = torch.full((batch, 1), self.decoder_start_token_id, device=encoder_hidden.device)
        state = Seq2SeqState(
            None,
            encoder_hidden,
            mask.bool()[:, None, None, :],  # 4D: HF passes it through to the attention unchanged
            torch.arange(batch, device=encoder_hidden.device),
        )
        return self._decode(state, start, level=0)

    @torch.no_grad()
    def step(self, state: Seq2SeqState, codes: Tensor, level: int) -> tuple[Tensor, Seq2SeqState]:
        """Feed codes (R,) of ``level - 1`` with the cache -> logits (R, V_level), state."""
        tokens = codes.long() + self.vocab.level_slice(level - 1).start
        return self._decode(state, tokens[:, None], level)

    def _decode(
        self, state: Seq2SeqState, tokens: Tensor, level: int
    ) -> tuple[Tensor, Seq2SeqState]:
        before = [c._attn_implementation_internal for c in self._decoder_configs]
        for c in self._decoder_configs:
            c._attn_implementation_internal = GROUPED_ATTENTION
        try:
            with _level_head(self.model.get_output_embeddings(), self.vocab.level_slice(level)):
                out = self.model(
                    encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder_hidden),
                    attention_mask=state.encoder_mask,
                    decoder_input_ids=tokens,
                    use_cache=True,
                    return_dict=True,
                    **{self._cache_field: state.cache},
                )
        finally:
            for c, name in zip(self._decoder_configs, before, strict=True):
                c._attn_implementation_internal = name
        cache = getattr(out, self._cache_field, None)
        if not isinstance(cache, EncoderDecoderCache):
            raise SemidError(
                f"{type(self.model).__name__} returned a {type(cache).__name__}; "
                "Seq2SeqStepModel needs an EncoderDecoderCache (self- and cross-attention K/V)"
            )
        state.cache = cache
        block = self.vocab.level_slice(level)
        logits = out.logits[:, -1]
        return (logits if logits.shape[-1] == block.stop - block.start else logits[:, block]), state

    def select(self, state: Seq2SeqState, rows: Tensor) -> Seq2SeqState:
        """New row i = old row rows[i]: reorders the self-attention cache with index_select (in place).

        Cross-attention K/V and encoder outputs depend only on the query and stay one row per query
        while the rows remain grouped by query (what ``constrained_beam_search`` produces); rows
        that break the grouping get their own copies from then on."""
        query = state.query[rows]
        state.cache.self_attention_cache.reorder_cache(rows)
        if not state.per_row and not rows_grouped_by_query(query, state.encoder_hidden.shape[0]):
            rows, state.per_row = query, True  # copy out each row's query, once
        if state.per_row:
            state.cache.cross_attention_cache.reorder_cache(rows)
            state.encoder_hidden = state.encoder_hidden.index_select(0, rows)
            state.encoder_mask = state.encoder_mask.index_select(0, rows)
        state.query = query
        return state


@contextmanager
def _level_head(head: torch.nn.Module, block: slice) -> Iterator[None]:
    """While active, a linear output head computes only the logits of ``block`` (one code level)
    instead of the whole vocabulary; any other head is left alone (its logits are sliced after)."""
    if type(head) is not torch.nn.Linear:
        yield
        return

    def level_logits(x: Tensor) -> Tensor:
        bias = None if head.bias is None else head.bias[block]
        return F.linear(x, head.weight[block], bias)

    head.forward = level_logits  # an instance attribute shadows Linear.forward
    try:
        yield
    finally:
        del head.forward
