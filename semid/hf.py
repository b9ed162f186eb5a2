"""Hugging Face adapters: a trie LogitsProcessor for ``generate`` and a StepModel for our beam search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import EncoderDecoderCache, LogitsProcessor
from transformers.modeling_outputs import BaseModelOutput

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
    with False they stay HF's log-probs over the whole vocabulary.
    """

    def __init__(
        self,
        trie: PrefixTrie,
        vocab: CodeVocabulary,
        prompt_length: int = 1,
        eos_token_id: int | None = None,
        level_normalize: bool = True,
    ) -> None:
        _check_match(trie, vocab)
        if prompt_length < 0:
            raise ValueError(f"`prompt_length` must be >= 0, got {prompt_length}")
        self.trie, self.vocab = trie, vocab
        self.prompt_length, self.eos_token_id = prompt_length, eos_token_id
        self.level_normalize = level_normalize

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
        keep[:, block] = self.trie.allowed_mask(states, level)
        if self.level_normalize:
            scores = scores.clone()
            scores[:, block] = torch.log_softmax(scores[:, block].float(), dim=-1).to(scores.dtype)
        return scores.masked_fill(~keep, float("-inf"))


@dataclass
class Seq2SeqState:
    """Decoding state of R rows: the KV cache plus the encoder outputs each row attends to."""

    cache: Any  # transformers EncoderDecoderCache with R rows (self- and cross-attention K/V)
    encoder_hidden: Tensor  # (R, S, D); only its shape is read once cross-attention K/V are cached
    encoder_mask: Tensor  # (R, S)
    query: Tensor  # (R,) the query each row belongs to


class Seq2SeqStepModel:
    """StepModel over any HF encoder-decoder (e.g. T5ForConditionalGeneration) whose vocabulary holds ``vocab``.

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

    @torch.no_grad()
    def start(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Seq2SeqState]:
        """Encode the batch once and run the first decoder step on B rows -> logits (B, V_0), state."""
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        encoder_hidden = self.model.get_encoder()(
            input_ids=input_ids, attention_mask=mask
        ).last_hidden_state
        start = torch.full(
            (input_ids.shape[0], 1), self.decoder_start_token_id, device=input_ids.device
        )
        state = Seq2SeqState(
            None, encoder_hidden, mask, torch.arange(input_ids.shape[0], device=input_ids.device)
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
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder_hidden),
            attention_mask=state.encoder_mask,
            decoder_input_ids=tokens,
            past_key_values=state.cache,
            use_cache=True,
            return_dict=True,
        )
        state.cache = out.past_key_values
        return out.logits[:, -1, self.vocab.level_slice(level)], state

    def select(self, state: Seq2SeqState, rows: Tensor) -> Seq2SeqState:
        """New row i = old row rows[i]: reorders the K/V cache with index_select (in place).

        Cross-attention K/V and encoder outputs depend only on the query, so they are copied only
        when the rows' queries change (the expansion B -> B * beams), not when beams reorder.
        """
        query = state.query[rows]
        same_queries = torch.equal(query, state.query)
        if same_queries and isinstance(state.cache, EncoderDecoderCache):
            state.cache.self_attention_cache.reorder_cache(rows)
        else:
            state.cache.reorder_cache(rows)
        if not same_queries:
            state.encoder_hidden = state.encoder_hidden.index_select(0, rows)
            state.encoder_mask = state.encoder_mask.index_select(0, rows)
        state.query = query
        return state
