"""HF adapters: our search through Seq2SeqStepModel agrees with HF generate under TrieLogitsProcessor."""

from __future__ import annotations

import pytest
import torch
from transformers import EncoderDecoderCache, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from semid.beam_search import constrained_beam_search
from semid.errors import SemidError
from semid.generator import TrieNormalizedSteps
from semid.hf import Seq2SeqStepModel, TrieLogitsProcessor, cache_field
from semid.trie import PrefixTrie
from semid.vocab import CodeVocabulary

SIZES = [8, 8, 8]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vocab = CodeVocabulary(SIZES, num_special=2)  # 0 = pad / decoder start, 1 = eos
    config = T5Config(
        vocab_size=vocab.size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    codes = torch.unique(torch.randint(0, 8, (150, 3)), dim=0)
    trie = PrefixTrie.from_codes(codes, SIZES)
    inputs = {
        "input_ids": torch.randint(2, vocab.size, (3, 7)),
        "attention_mask": torch.ones(3, 7, dtype=torch.long),
    }
    inputs["attention_mask"][1, 4:] = 0  # a padded query
    return vocab, model, trie, inputs


def hf_beam_search(model, inputs, trie, vocab, k, trie_normalize=False):
    """HF generate under the trie -> codes (B, k, L), scores (B, k); k = 1 is HF's greedy search."""
    processor = TrieLogitsProcessor(trie, vocab, trie_normalize=trie_normalize)
    beam_args = {"num_beams": k, "num_return_sequences": k, "length_penalty": 0.0} if k > 1 else {}
    out = model.generate(
        **inputs, **beam_args, max_new_tokens=trie.levels, do_sample=False,
        logits_processor=[processor], return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    batch = inputs["input_ids"].shape[0]
    codes = vocab.tokens_to_codes(out.sequences[:, 1:].reshape(batch, k, trie.levels))
    if k > 1:
        return codes, out.sequences_scores.view(batch, k)
    # greedy: the processed scores are level log-probs (level_normalize), so their sum is the ID's score
    steps = torch.stack(out.scores, 1).gather(2, out.sequences[:, 1:, None]).squeeze(2)
    return codes, steps.sum(1).view(batch, 1)


@pytest.mark.parametrize("trie_normalize", [False, True])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_native_search_matches_hf_generate(setup, k, trie_normalize):
    """Level-normalised, or (a generator trained with trie_softmax) normalised over the trie's
    allowed codes, as TrieNormalizedSteps scores them."""
    vocab, model, trie, inputs = setup
    hf_codes, hf_scores = hf_beam_search(model, inputs, trie, vocab, k, trie_normalize)
    steps = Seq2SeqStepModel(model, vocab)
    if trie_normalize:
        steps = TrieNormalizedSteps(steps, trie)
    ours = constrained_beam_search(steps, inputs, trie, num_beams=k)
    assert torch.equal(ours.codes, hf_codes)
    torch.testing.assert_close(ours.log_probs, hf_scores, rtol=0, atol=1e-4)
    assert trie.contains(ours.codes.view(-1, 3)).all()


class CopyPerBeamSteps:
    """The previous Seq2SeqStepModel, kept as a reference: encoder outputs and cross-attention K/V
    copied to every beam row, HF's own attention."""

    def __init__(self, model, vocab):
        self.model, self.vocab = model, vocab

    @torch.no_grad()
    def start(self, inputs):
        hidden = self.model.get_encoder()(**inputs).last_hidden_state
        start = torch.zeros(hidden.shape[0], 1, dtype=torch.long)
        return self._decode([None, hidden, inputs["attention_mask"]], start, 0)

    @torch.no_grad()
    def step(self, state, codes, level):
        tokens = codes.long() + self.vocab.level_slice(level - 1).start
        return self._decode(state, tokens[:, None], level)

    def _decode(self, state, tokens, level):
        field = cache_field(self.model)  # the installed transformers' name for the K/V cache
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=state[1]), attention_mask=state[2],
            decoder_input_ids=tokens, use_cache=True, **{field: state[0]},
        )  # fmt: skip
        state[0] = getattr(out, field)
        return out.logits[:, -1, self.vocab.level_slice(level)], state

    def select(self, state, rows):
        state[0].reorder_cache(rows)
        return [state[0], state[1][rows], state[2][rows]]


@pytest.mark.parametrize("k", [1, 4, 16])
def test_one_encoder_copy_per_query_matches_copy_per_beam(setup, k):
    vocab, model, trie, inputs = setup
    ours = constrained_beam_search(Seq2SeqStepModel(model, vocab), inputs, trie, num_beams=k)
    ref = constrained_beam_search(CopyPerBeamSteps(model, vocab), inputs, trie, num_beams=k)
    assert torch.equal(ours.codes, ref.codes)
    torch.testing.assert_close(ours.log_probs, ref.log_probs, rtol=0, atol=1e-5)


def test_cross_attention_cache_stays_one_row_per_query(setup):
    vocab, model, trie, inputs = setup
    steps = Seq2SeqStepModel(model, vocab)
    _, state = steps.start(inputs)
    rows = torch.arange(3).repeat_interleave(5)  # B = 3 queries -> 15 beam rows
    state = steps.select(state, rows)
    logits, state = steps.step(state, torch.zeros(15, dtype=torch.long), 1)
    assert isinstance(state.cache, EncoderDecoderCache) and not state.per_row
    assert state.cache.self_attention_cache.layers[0].keys.shape[0] == 15
    assert state.cache.cross_attention_cache.layers[0].keys.shape[0] == 3
    assert state.encoder_hidden.shape[0] == 3
    # rows out of query order: each row gets its own copy, and the scores are unchanged
    ref = CopyPerBeamSteps(model, vocab)
    _, ref_state = ref.start(inputs)
    ref_logits, ref_state = ref.step(
        ref.select(ref_state, rows), torch.zeros(15, dtype=torch.long), 1
    )
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    shuffle = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    state = steps.select(state, shuffle)
    assert state.per_row and state.cache.cross_attention_cache.layers[0].keys.shape[0] == 15
    logits, _ = steps.step(state, torch.ones(15, dtype=torch.long), 2)
    ref_logits, _ = ref.step(ref.select(ref_state, shuffle), torch.ones(15, dtype=torch.long), 2)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # the model's own setting is restored


def test_encoder_runs_once_per_batch(setup):
    vocab, model, trie, inputs = setup
    calls = []
    handle = model.get_encoder().register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        constrained_beam_search(Seq2SeqStepModel(model, vocab), inputs, trie, num_beams=4)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_processor_masks_everything_outside_the_trie(setup):
    vocab, _, trie, _ = setup
    proc = TrieLogitsProcessor(trie, vocab, level_normalize=False)
    ids = trie.all_codes()[:4]
    tokens = vocab.codes_to_tokens(ids)
    prompt = torch.zeros(4, 1, dtype=torch.long)
    scores = proc(torch.cat([prompt, tokens[:, :2]], 1), torch.zeros(4, vocab.size))
    for row, (c0, c1, _) in enumerate(ids.tolist()):
        allowed = {c[2] for c in trie.all_codes().tolist() if c[:2] == [c0, c1]}
        kept = torch.isfinite(scores[row]).nonzero().view(-1) - vocab.level_slice(2).start
        assert set(kept.tolist()) == allowed
    with pytest.raises(SemidError, match="max_new_tokens"):
        proc(torch.cat([prompt, tokens], 1), torch.zeros(4, vocab.size))
    eos = TrieLogitsProcessor(trie, vocab, eos_token_id=1)(
        torch.cat([prompt, tokens], 1), torch.zeros(4, vocab.size)
    )
    assert (torch.isfinite(eos).nonzero()[:, 1] == 1).all()


def test_vocabulary_checks(setup):
    vocab, model, trie, _ = setup
    with pytest.raises(SemidError, match="codebook sizes"):
        TrieLogitsProcessor(trie, CodeVocabulary([8, 8, 4]))
    with pytest.raises(SemidError, match="vocab_size"):
        Seq2SeqStepModel(model, CodeVocabulary([8, 8, 8, 8], num_special=2))


def test_code_vocabulary_round_trip():
    vocab = CodeVocabulary([4, 3, 5], num_special=2)
    assert vocab.size == 14 and vocab.level_slice(1) == slice(6, 9)
    codes = torch.tensor([[3, 0, 4], [0, 2, 1]])
    tokens = vocab.codes_to_tokens(codes)
    assert tokens.tolist() == [[5, 6, 13], [2, 8, 10]]
    assert torch.equal(vocab.tokens_to_codes(tokens), codes)
    with pytest.raises(SemidError, match="out of range"):
        vocab.codes_to_tokens(torch.tensor([[4, 0, 0]]))
    with pytest.raises(SemidError, match="level"):
        vocab.tokens_to_codes(torch.tensor([[6, 6, 13]]))


def test_the_cache_is_passed_under_the_installed_transformers_name():
    # transformers 5.x renamed `past_key_values` to `cache` (forward argument and output field);
    # the step model follows the installed version, and says so when a model takes neither
    class Older(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None): ...

    class Newer(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None): ...

    class Neither(torch.nn.Module):
        def forward(self, input_ids=None): ...

    assert cache_field(Older()) == "past_key_values"
    assert cache_field(Newer()) == "cache"
    with pytest.raises(SemidError, match="neither `cache` nor `past_key_values`"):
        cache_field(Neither())
