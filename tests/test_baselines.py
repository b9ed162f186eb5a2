import pytest
import torch

from semid.errors import SemidError
from semid.generators.popular import MostPopular, MostPopularConfig
from semid.generators.sasrec import SASRec, SASRecConfig
from semid.ids import SemanticIDs
from semid.layers import causal_bias
from semid.models import load_model, save_model
from semid.ranking import ranker_for


def index_of(n):
    """An index of n rows (the scorers rank rows; their IDs do not matter here)."""
    return SemanticIDs([f"i{j}" for j in range(n)], torch.arange(n)[:, None], [n])


def top_rows(model, batch, k):
    return ranker_for(model, index_of(model.config.num_items)).rank(batch, k).rows


def test_most_popular_ranks_by_train_count_with_stable_ties():
    pop = MostPopular(MostPopularConfig(num_items=4))
    pop.fit_counts_(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]))  # counts 3, 5, 3, 0
    ranked = top_rows(pop, {"items": torch.zeros(2, 4, dtype=torch.long)}, k=3)
    assert ranked.tolist() == [[1, 0, 2], [1, 0, 2]]
    # at counts past float32's resolution of the tie-break (ml-100k's 287 - 1e-3 * 15/1682 is 287
    # in float32):
    # the ranking keeps the scores' float64, so tied items still come lower row first
    many = MostPopular(MostPopularConfig(num_items=1682))
    many.fit_counts_(torch.tensor([25] * 287 + [15] * 287 + [3] * 300))
    ranked = top_rows(many, {"items": torch.zeros(1, 4, dtype=torch.long)}, k=3)
    assert ranked.tolist() == [[3, 15, 25]]


@pytest.mark.parametrize("scorer", ["pop", "sasrec"])
def test_scorers_score_on_another_device_than_the_cpu(scorer):
    """On torch's meta device a tensor made on the CPU midway raises, as it would on a GPU (the
    most-popular tie-break once did); data-dependent steps (training losses) cannot run there."""
    model = make() if scorer == "sasrec" else MostPopular(MostPopularConfig(num_items=20))
    batch = {"items": torch.tensor([[-1, 3, 4], [1, 2, 5]]), "times": torch.zeros(2, 3)}
    scores = model.to("meta").score_rows({k: v.to("meta") for k, v in batch.items()})
    assert scores.device.type == "meta" and scores.shape == (2, 20)


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
        loss, hidden = model(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4 and hidden.shape == (n * 6, 16)  # every position has a target
    top = top_rows(model.eval(), {"items": items}, k=1)[:, 0]
    assert (top == (items[:, -1] + 1) % n).float().mean() > 0.9


def test_sasrec_loss_scores_only_positions_with_a_next_item():
    model = make().eval()
    items = torch.tensor([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    nxt = torch.tensor([[-1, -1, 4, 5, 6, 7], [2, 3, 4, 5, 6, -1]])
    loss, hidden = model({"items": items, "next_items": nxt})
    every = model.scores(model.encode(items))  # (2, 6, N): padding scored too
    expected = torch.nn.functional.cross_entropy(
        every.flatten(0, 1), nxt.flatten(), ignore_index=-1
    )
    assert hidden.shape == (9, 16) and torch.allclose(loss, expected, atol=1e-6)


def test_sasrec_save_load(tmp_path):
    model = make().eval()
    save_model(model, tmp_path / "s")
    loaded = load_model(tmp_path / "s")
    assert isinstance(loaded, SASRec) and not loaded.training
    items = torch.tensor([[-1, -1, 1, 2, 3, 4]])
    assert torch.equal(top_rows(model, {"items": items}, 5), top_rows(loaded, {"items": items}, 5))
    with pytest.raises(SemidError, match="is not a saved model"):
        load_model(tmp_path / "nothing")
