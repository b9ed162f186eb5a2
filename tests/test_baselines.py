import pytest
import torch

from semid.baselines import MostPopular, SASRec, SASRecConfig, causal_bias
from semid.errors import SemidError


def test_most_popular_ranks_by_train_count_with_stable_ties():
    pop = MostPopular(torch.tensor([3.0, 5.0, 3.0, 0.0]))
    ranked = pop.recommend({"items": torch.zeros(2, 4, dtype=torch.long)}, k=3)
    assert ranked.tolist() == [[1, 0, 2], [1, 0, 2]]


def test_causal_bias_hides_future_and_padding():
    items = torch.tensor([[-1, 4, 7]])
    bias = causal_bias(items)[0, 0]
    allowed = torch.isfinite(bias)
    assert allowed.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def make(n=20, **kw):
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(num_items=n, max_len=6, dim=16, heads=2, layers=1, dropout=0.0, **kw)
    )


def test_sasrec_is_causal():
    model = make().eval()
    a = torch.tensor([[-1, 1, 2, 3, 4, 5]])
    b = torch.tensor([[-1, 1, 2, 3, 9, 8]])
    ha, hb = model.encode(a), model.encode(b)
    assert torch.allclose(ha[:, :4], hb[:, :4], atol=1e-6)
    assert not torch.allclose(ha[:, 4:], hb[:, 4:])


def test_sasrec_learns_a_deterministic_successor():
    """next item = (item + 1) mod n: full cross-entropy training should rank it first."""
    n = 12
    model = make(n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = torch.arange(n)
    items = (starts[:, None] + torch.arange(6)) % n
    batch = {"items": items, "next_items": (items + 1) % n}
    first = None
    for _ in range(60):
        loss, logits = model(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4 and logits.shape == (n, 6, n)
    top = model.eval().recommend({"items": items}, k=1)[:, 0]
    assert (top == (items[:, -1] + 1) % n).float().mean() > 0.9


def test_sasrec_save_load(tmp_path):
    model = make().eval()
    model.save_pretrained(tmp_path / "s")
    loaded = SASRec.from_pretrained(tmp_path / "s").eval()
    items = torch.tensor([[-1, -1, 1, 2, 3, 4]])
    assert torch.equal(model.recommend({"items": items}, 5), loaded.recommend({"items": items}, 5))
    with pytest.raises(SemidError, match="not a model folder"):
        SASRec.from_pretrained(tmp_path / "nothing")
