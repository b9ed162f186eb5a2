import pytest
import torch
from conftest import train_on_batch

from semid.errors import SemidError
from semid.generators.tiger import NUM_FIXED_SPECIAL, PAD_TOKEN
from semid.models import build_model
from semid.trie import PrefixTrie

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [4, 4, 2]


def make(**kw):
    torch.manual_seed(0)
    cfg = {
        "max_items": 3,
        "user_buckets": 7,
        "d_model": 32,
        "d_ff": 64,
        "d_kv": 16,
        "num_heads": 2,
        "num_layers": 1,
    }
    return build_model("tiger", {**cfg, **kw, "codebook_sizes": SIZES})


def test_encoder_inputs_layout():
    model = make(causal=False)  # TIGER's bidirectional layout
    hist = torch.tensor(
        [
            [[-1, -1, -1], [-1, -1, -1], [1, 2, 0], [3, 0, 1]],  # two real items, left padding
            [
                [0, 0, 0],
                [2, 1, 1],
                [1, 2, 0],
                [3, 0, 1],
            ],  # four items: only the last max_items=3 are read
        ]
    )
    out = model.encoder_inputs({"history_codes": hist, "users": torch.tensor([123, 5])})
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 1 + 3 * 3)  # user token + max_items (3) items of 3 codes
    assert (
        (ids[:, 0] >= NUM_FIXED_SPECIAL) & (ids[:, 0] < NUM_FIXED_SPECIAL + 7)
    ).all()  # hashed user tokens
    assert ids[0, 1:4].tolist() == [PAD_TOKEN] * 3 and mask[0].tolist() == [1, 0, 0, 0] + [1] * 6
    assert model.vocab.tokens_to_codes(ids[0, 4:7]).tolist() == [1, 2, 0]
    assert model.vocab.tokens_to_codes(ids[1, 1:4]).tolist() == [2, 1, 1]
    assert mask[1].tolist() == [1] * 10
    short = model.encoder_inputs({"history_codes": hist[:1], "users": torch.tensor([123])})
    assert short["input_ids"].shape == (
        1,
        1 + 2 * 3,
    )  # columns that are padding in every row are dropped


def test_tiger_learns_the_next_id():
    """Each history's next item is a fixed function of its last item; TIGER should generate it."""
    every = torch.cartesian_prod(*(torch.arange(v) for v in SIZES))
    codes = every[torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:8]]
    succ = torch.roll(torch.arange(8), -1)
    rows = (torch.arange(8)[:, None] + torch.arange(3)) % 8
    batch = {
        "users": torch.arange(8),
        "history_codes": codes[rows],
        "target_codes": codes[succ[rows[:, -1]]],
    }
    model = make(dropout=0.0)
    train_on_batch(model, batch)
    got, _ = model.generate(batch, PrefixTrie.from_codes(codes, SIZES), num_beams=3, top_k=1)
    assert (got[:, 0] == batch["target_codes"]).all(1).float().mean() >= 0.75


HIST = torch.tensor(
    [
        [[-1, -1, -1], [-1, -1, -1], [1, 2, 0], [3, 0, 1]],  # two real items, left padding
        [[0, 0, 0], [2, 1, 1], [1, 2, 0], [3, 0, 1]],
    ]
)


def test_causal_layout_and_mask():
    model = make(max_items=2)
    out = model.encoder_inputs({"history_codes": HIST, "users": torch.tensor([123, 5])})
    ids, mask, visible = out["input_ids"], out["attention_mask"], out["encoder_mask"][:, 0]
    assert ids.shape == (2, 1 + 2 * 3) and model.train_format == "sequence"
    # the user token sits right before the first real item; padding comes first
    users = ids[:, 0]
    assert ((users >= NUM_FIXED_SPECIAL) & (users < NUM_FIXED_SPECIAL + 7)).all()
    assert mask.tolist() == [[1] * 7] * 2
    assert model.vocab.tokens_to_codes(ids[0, 1:4]).tolist() == [1, 2, 0]
    long = model._layout(HIST, torch.tensor([123, 5]))  # all 4 columns, as in training windows
    ids, visible, user = long["input_ids"], long["encoder_mask"][:, 0], long["is_user"]
    assert ids[0, :3].tolist() == [PAD_TOKEN] * 3 and user[0].nonzero().item() == 6
    assert user[1].nonzero().item() == 0
    item = long["item_of_token"][1]  # row 1: user, then items 0..3 of 3 tokens each
    for q in range(13):
        allowed = {k for k in range(13) if k == 0 or 0 <= item[q] - item[k] < 2}
        assert set(visible[1, q].nonzero().view(-1).tolist()) == (allowed if q else {0})
    assert not visible[0, :, :6].any()  # nobody reads padding
    assert make(causal=False).train_format == "target"


def window_batch(t=4):
    g = torch.Generator().manual_seed(3)
    codes = torch.stack([torch.randint(0, v, (2, t), generator=g) for v in SIZES], -1)
    hist = codes.clone()
    hist[0, :2] = -1  # a left-padded window: its first two positions have no history
    nxt = torch.roll(codes, -1, dims=1)
    nxt[0, :2] = -1
    nxt[1, -1] = -1  # the last position of row 1 has no next item
    return {"users": torch.tensor([4, 9]), "history_codes": hist, "next_codes": nxt}


@pytest.mark.parametrize("max_items", [4, 3, 2])
def test_one_window_pass_equals_one_pass_per_target(max_items):
    """Causal TIGER: the window forward's loss and logits are those of encoding each prefix alone
    (windows longer than max_items: the prefix within its chunk of max_items columns, cut from the right)."""
    model = make(num_layers=2, max_items=max_items).eval()
    batch = window_batch()
    loss, logits = model(batch)
    hist, nxt = batch["history_codes"], batch["next_codes"]
    real = (nxt[..., 0] >= 0) & (hist[..., 0] >= 0)
    rows, cols = real.nonzero(as_tuple=True)
    pad = (-4) % max_items
    chunk = (cols + pad) // max_items  # the model sees (row, chunk) pairs in order, then columns
    order = sorted(range(len(rows)), key=lambda i: (int(rows[i]), int(chunk[i]), int(cols[i])))
    rows, cols, chunk = rows[order], cols[order], chunk[order]
    starts = (chunk * max_items - pad).clamp(min=0)
    prefixes = torch.stack(
        [
            torch.cat([torch.full((4 - 1 - c + a, 3), -1), hist[r, a : c + 1]])
            for r, c, a in zip(rows.tolist(), cols.tolist(), starts.tolist(), strict=True)
        ]
    )
    single = {
        "users": batch["users"][rows],
        "history_codes": prefixes,
        "target_codes": nxt[rows, cols],
    }
    loss1, logits1 = model(single)
    torch.testing.assert_close(logits, logits1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, loss1, atol=1e-5, rtol=1e-5)
    # the search scores the first level as training does
    start_logits, _ = model.step_model().start(single)
    torch.testing.assert_close(start_logits, logits1, atol=1e-5, rtol=1e-5)


def test_window_batches_need_the_causal_encoder():
    model = make(causal=False)
    batch = window_batch()
    with pytest.raises(SemidError, match="target_codes"):
        model(batch)


def test_causal_tiger_trains_on_windows_of_max_items_targets():
    from semid.dropout import BitDropout
    from semid.tasks.recommend import training_window

    causal, bidirectional = make(max_items=7), make(causal=False, max_items=7)
    assert training_window(causal, 50) == 7  # a longer window would be cut into padded chunks
    assert training_window(causal, 5) == 5
    assert training_window(bidirectional, 50) == 50
    assert training_window(build_model("sasrec", {"num_items": 10}), 50) == 50
    drops = [m for m in causal.modules() if isinstance(m, (BitDropout, torch.nn.Dropout))]
    assert drops and all(isinstance(m, BitDropout) for m in drops)
