import pytest
import torch
from conftest import train_on_batch

from semid.errors import SemidError
from semid.generators.mmgrec import MMGRec, MMGRecConfig
from semid.ids import SemanticIDs
from semid.models import build_model
from semid.trie import PrefixTrie

SIZES = [4, 4, 2]


def make(**kw):
    torch.manual_seed(0)
    cfg = {"dim": 32, "heads": 2, "layers": 1, "ff_mult": 2, "dropout": 0.0}
    return build_model("mmgrec", {**cfg, **kw, "codebook_sizes": SIZES})


def test_unknown_relation_is_rejected():
    with pytest.raises(SemidError, match="unknown MMGRec relations"):
        make(relations=["time", "weather"])


@pytest.mark.parametrize(
    "bad", [{"cooccur_window": 0}, {"cooccur_neighbours": 0}, {"cooccur_buckets": 1}]
)
def test_cooccur_settings_that_cannot_work_are_rejected(bad):
    with pytest.raises(SemidError, match="at least"):
        make(relations=["cooccur"], **bad)
    make(relations=["time"], **bad)  # ignored without the relation


def test_distance_relation_reaches_the_history_length_unless_set():
    ids = SemanticIDs(
        [f"i{j}" for j in range(3)], torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0]]), SIZES
    )
    assert MMGRec.sized_for(MMGRecConfig(), ids, max_history=200).max_distance == 200
    assert MMGRec.sized_for(MMGRecConfig(max_distance=20), ids, max_history=200).max_distance == 20
    assert MMGRec.sized_for(MMGRecConfig(), ids).max_distance == 50  # no task: the task's default
    model = make(max_distance=3, relations=["distance"])
    assert model.relation_emb["distance"].num_embeddings == 4
    torch.nn.init.normal_(model.relation_emb["distance"].weight)
    bias = model.relation_bias(torch.zeros(1, 6, 3, dtype=torch.long), torch.zeros(1, 6))[0]
    assert torch.equal(bias[:, 5, 0], bias[:, 5, 2])  # 5 and 3 apart: both clipped at 3
    assert not torch.equal(bias[:, 5, 2], bias[:, 5, 3])  # 3 and 2 apart differ
    with pytest.raises(SemidError, match="max_distance must be at least 1"):
        make(max_distance=0)


def test_relation_bias_is_causal_and_uses_each_relation():
    model = make()
    for emb in model.relation_emb.values():  # make every relation visible in the bias
        torch.nn.init.normal_(emb.weight)
    codes = torch.tensor([[[-1, -1, -1], [1, 2, 0], [1, 2, 1], [3, 0, 0]]])
    times = torch.tensor([[0, 10, 10, 5000]])
    bias = model.relation_bias(codes, times)
    assert bias.shape == (1, 2, 4, 4)
    allowed = torch.isfinite(bias[0, 0])
    assert not allowed[1, 2] and allowed[2, 1] and not allowed[3, 0]  # no future, no padding
    # items 1 and 2 share a 2-code prefix and a time; items 1 and 3 share nothing
    prefix = model.relation_emb["prefix"].weight
    time = model.relation_emb["time"].weight
    dist = model.relation_emb["distance"].weight
    assert torch.allclose(bias[0, :, 2, 1], prefix[2] + time[0] + dist[1])
    gap_bucket = int(torch.log2(torch.tensor(4991.0)).ceil())
    assert torch.allclose(bias[0, :, 3, 1], prefix[0] + time[gap_bucket] + dist[2])


def test_cooccur_relation_biases_pairs_by_their_bucketed_training_counts():
    model = make(relations=["cooccur"], cooccur_items=4, cooccur_window=1)
    torch.nn.init.normal_(model.relation_emb["cooccur"].weight)
    # 0 and 1 are adjacent 8 times, 2 and 3 once, 0 and 2 never; item 4 comes later (index add)
    items = torch.tensor([0, 1] * 3 + [1, 0, 1, 0, 3, 2])
    model.fit_train_sequences_(items, torch.tensor([0, 6, 12]))
    history = torch.tensor([[0, 1, 2, 3, 4]])
    codes = torch.tensor([[[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0]]])
    times = torch.zeros(1, 5, dtype=torch.long)
    bias = model.relation_bias(codes, times, history)[0]
    weight = model.relation_emb["cooccur"].weight
    # 0-1: bucket 4 ([8, 16)), 2-3: bucket 1, 0-2 and the unknown 4: bucket 0
    assert torch.allclose(bias[:, 1, 0], weight[4]) and torch.allclose(bias[:, 3, 2], weight[1])
    assert torch.allclose(bias[:, 2, 0], weight[0]) and torch.allclose(bias[:, 4, 1], weight[0])
    without_rows = model.relation_bias(codes, times)[0]  # no rows given: no cooccur term
    assert (without_rows[torch.isfinite(without_rows)] == 0).all()


def test_cooccur_table_is_saved_with_the_weights(tmp_path):
    from semid.models import load_model, save_model

    model = make(relations=["cooccur"], cooccur_items=3, cooccur_window=1)
    model.fit_train_sequences_(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 4]))
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert torch.equal(loaded.cooccur_rows, model.cooccur_rows)
    assert torch.equal(loaded.cooccur_counts, model.cooccur_counts)
    assert int(loaded.cooccur_counts.sum()) == 6  # 0-1 once, 1-2 twice, each both ways


def test_no_relations_means_order_free_attention():
    """Without relations (and no absolute positions) the last state ignores the order of earlier items."""
    model = make(relations=[]).eval()
    a = torch.tensor([[[1, 2, 0], [3, 0, 0], [2, 2, 1]]])
    b = a[:, [1, 0, 2]]
    times = torch.zeros(1, 3, dtype=torch.long)
    assert torch.allclose(model.encode(a, times)[:, -1], model.encode(b, times)[:, -1], atol=1e-5)
    with_rel = make().eval()
    for emb in with_rel.relation_emb.values():
        torch.nn.init.normal_(emb.weight)
    assert not torch.allclose(
        with_rel.encode(a, times)[:, -1], with_rel.encode(b, times)[:, -1], atol=1e-5
    )


def test_mmgrec_learns_the_next_id():
    every = torch.cartesian_prod(*(torch.arange(v) for v in SIZES))
    codes = every[torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:8]]
    rows = (torch.arange(8)[:, None] + torch.arange(4)) % 8  # sequences of consecutive items
    batch = {
        "history_codes": codes[rows],
        "times": torch.arange(4).repeat(8, 1),
        "next_codes": codes[(rows + 1) % 8],
    }
    model = make()
    train_on_batch(model, batch)
    got, _ = model.generate(batch, PrefixTrie.from_codes(codes, SIZES), num_beams=3, top_k=1)
    assert (got[:, 0] == codes[(rows[:, -1] + 1) % 8]).all(1).float().mean() >= 0.75


def test_item_embeddings_add_a_per_row_vector_and_skip_rows_added_later():
    model = make(num_items=3).eval()
    codes = torch.tensor(
        [[[1, 2, 0], [1, 2, 0], [1, 2, 0], [-1, -1, -1]]]
    )  # the same ID for rows 0, 1, 5; then PAD
    items = torch.tensor([[0, 1, 5, -1]])
    x = model.embed_items(codes, items)[0]
    assert not torch.allclose(x[0], x[1])  # rows 0 and 1 differ by their own vectors
    # row 5 was added after training (>= num_items): codes alone, as without items
    torch.testing.assert_close(x[2], model.embed_items(codes)[0, 2])
    assert (x[3] == 0).all()


def test_last_only_blocks_give_the_last_position_of_the_full_pass():  # MMGRec and SASRec
    """Search reads only the last history state and the last decoder token; computing only those
    rows in the top block must give the same numbers as the full pass."""
    from semid.layers import SelfAttentionBlock, causal_bias

    torch.manual_seed(0)
    block = SelfAttentionBlock(16, 2, 0.0, ff_mult=4).eval()
    items = torch.tensor([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 5]])
    x, bias = torch.randn(2, 5, 16), causal_bias(items)
    assert torch.allclose(block(x, bias, last_only=True), block(x, bias)[:, -1:], atol=1e-6)
    model = build_model("mmgrec", {"codebook_sizes": [4, 4], "dim": 16, "heads": 2}).eval()
    codes = torch.randint(0, 4, (2, 5, 2)).masked_fill(items[..., None] < 0, -1)
    times = torch.arange(5).expand(2, -1) * 100
    full = model.encode(codes, times)[:, -1:]
    assert torch.allclose(model.encode(codes, times, last_only=True), full, atol=1e-6)
    tokens = torch.randn(3, 2, 16)
    assert torch.allclose(
        model.decode(tokens, last_only=True), model.decode(tokens)[:, -1:], atol=1e-6
    )
    sasrec = build_model("sasrec", {"num_items": 9, "dim": 16, "heads": 2}).eval()
    rows = items.clamp(max=8)
    assert torch.allclose(
        sasrec.encode(rows, last_only=True), sasrec.encode(rows)[:, -1:], atol=1e-6
    )
