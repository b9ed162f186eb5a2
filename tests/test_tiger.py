import torch
from conftest import train_on_batch

from semid.generator import build_generator
from semid.generators.tiger import NUM_FIXED_SPECIAL, PAD_TOKEN
from semid.trie import PrefixTrie

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
    return build_generator("tiger", {**cfg, **kw, "codebook_sizes": SIZES})


def test_encoder_inputs_layout():
    model = make()
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
