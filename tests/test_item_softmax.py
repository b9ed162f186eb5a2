import pytest
import torch
import torch.nn.functional as F

import semid.item_softmax
from semid.generators.sasrec import SASRec, SASRecConfig
from semid.item_softmax import item_cross_entropy
from semid.models import build_model


def problem(rows=37, items=50, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=g, requires_grad=True)
    table = torch.randn(items, dim, generator=g, requires_grad=True)
    targets = torch.randint(0, items, (rows,), generator=g)
    return hidden, table, targets


def loss_and_grads(hidden, table, targets, **kw):
    loss = item_cross_entropy(hidden, table, targets, **kw)
    return (loss, *torch.autograd.grad(2.5 * loss, [hidden, table]))  # a weighted loss, as MMGRec's


def test_a_problem_within_one_chunk_is_the_plain_cross_entropy_bit_for_bit():
    hidden, table, targets = problem()
    plain = F.cross_entropy(hidden @ table.T, targets)
    got = loss_and_grads(hidden, table, targets, chunk_floats=37 * 50)
    want = (plain, *torch.autograd.grad(2.5 * plain, [hidden, table]))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("chunk_floats", [1, 50 * 5, 50 * 36, 50 * 8 + 7])  # 1 row; ragged ends
def test_chunks_give_the_plain_loss_and_gradients(chunk_floats):
    hidden, table, targets = problem()
    want = loss_and_grads(hidden, table, targets, chunk_floats=10**9)
    got = loss_and_grads(hidden, table, targets, chunk_floats=chunk_floats)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunks_keep_float64_as_the_plain_loss_does():
    hidden, table, targets = problem()
    hidden, table = (t.detach().double().requires_grad_() for t in (hidden, table))
    want = loss_and_grads(hidden, table, targets, chunk_floats=10**9)
    got = loss_and_grads(hidden, table, targets, chunk_floats=50 * 5)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_chunks_follow_the_plain_loss_for_a_frozen_table_and_without_gradients():
    hidden, table, targets = problem()
    table.requires_grad_(False)
    want = item_cross_entropy(hidden, table, targets, chunk_floats=10**9)
    got = item_cross_entropy(hidden, table, targets, chunk_floats=50 * 4)
    (want_grad,), (got_grad,) = (torch.autograd.grad(x, [hidden]) for x in (want, got))
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        evaluated = item_cross_entropy(hidden, table, targets, chunk_floats=50 * 4)
    torch.testing.assert_close(evaluated, want, rtol=1e-6, atol=1e-6)
    assert not evaluated.requires_grad


def saved_floats(hidden, table, targets, **kw):
    """Floats autograd keeps for the backward pass of one loss (each storage once: the chunks keep
    views of the inputs)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        item_cross_entropy(hidden, table, targets, **kw)
    return sum(saved.values())


def test_chunks_keep_no_logits_for_the_backward_pass():
    hidden, table, targets = problem(rows=64, items=500)
    logits = 64 * 500
    assert (
        saved_floats(hidden, table, targets, chunk_floats=10**9) >= logits
    )  # one piece keeps them
    # chunked: the backward pass makes them again, so only the inputs are kept (rows x dim, items x dim)
    assert saved_floats(hidden, table, targets, chunk_floats=500 * 8) < logits / 4


def test_chunks_under_bf16_autocast_follow_the_plain_loss():
    hidden, table, targets = problem(rows=40, items=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss_and_grads(hidden, table, targets, chunk_floats=10**9)
        got = loss_and_grads(hidden, table, targets, chunk_floats=30 * 7)
    assert got[0].dtype == want[0].dtype == torch.float32
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_chunks_take_bfloat16_inputs_without_autocast():
    hidden, table, targets = (t.detach() for t in problem(rows=40, items=30))
    hidden, table = (t.bfloat16().requires_grad_() for t in (hidden, table))
    want = loss_and_grads(hidden, table, targets, chunk_floats=10**9)
    got = loss_and_grads(hidden, table, targets, chunk_floats=30 * 7)
    assert got[1].dtype == got[2].dtype == torch.bfloat16
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


def test_chunks_under_float16_autocast_keep_gradients_below_its_range():
    """Probabilities of 1e-9 (the many unlikely items of a large catalogue) are below float16's
    smallest number: their gradients are made in float32, not rounded to zero."""
    hidden = torch.zeros(2, 8)
    hidden[:, 0] = 10.0
    table = torch.zeros(40, 8)
    table[:, 0] = 1.0  # logit 10 for every item ...
    table[0, 0] = 3.0  # ... but 30 for the target: the others get about 2e-9 each
    hidden.requires_grad_(), table.requires_grad_()
    targets = torch.zeros(2, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = item_cross_entropy(hidden, table, targets, chunk_floats=40)  # a row per chunk
    grad_table = torch.autograd.grad(loss, [table])[0]
    assert (grad_table[1:, 0] > 0).all()  # 1e-8 each, not flushed to zero


def sasrec_batch(items=40):
    g = torch.Generator().manual_seed(1)
    history = torch.randint(0, items, (6, 8), generator=g)
    history[0, :3] = -1  # left padding: no target there
    following = torch.randint(0, items, (6, 8), generator=g)
    following[0, :3] = -1
    return {"items": history, "next_items": following}


def mmgrec_batch(items=40):
    batch = sasrec_batch(items)
    codes = torch.stack([torch.arange(items) % 4, (torch.arange(items) // 4) % 4], 1)

    def code_rows(rows):
        return torch.where(rows[..., None] >= 0, codes[rows.clamp(min=0)], -1)

    return {
        "history_codes": code_rows(batch["items"]),
        "next_codes": code_rows(batch["next_items"]),
        "times": torch.arange(8).repeat(6, 1),
        **batch,
    }


def grads_of(model, batch):
    model.zero_grad()
    loss = model(batch)[0]
    loss.backward()
    return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("make", "batch"),
    [
        (
            lambda: SASRec(
                SASRecConfig(num_items=40, max_len=8, dim=16, heads=2, layers=1, dropout=0)
            ),
            sasrec_batch,
        ),
        (
            lambda: build_model(
                "mmgrec",
                {
                    "dim": 16,
                    "heads": 2,
                    "layers": 1,
                    "dropout": 0.0,
                    "codebook_sizes": [4, 4],
                    "num_items": 40,
                },
            ),
            mmgrec_batch,
        ),
    ],
    ids=["sasrec", "mmgrec-item-head"],
)
def test_models_train_the_same_with_chunked_item_logits(monkeypatch, make, batch):
    torch.manual_seed(0)
    model, data = make(), batch()
    whole = grads_of(model, data)
    monkeypatch.setattr(semid.item_softmax, "LOGIT_CHUNK_FLOATS", 40 * 7)  # 45 rows: 7 chunks
    chunked = grads_of(model, data)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    assert len(chunked[1]) == len(whole[1])
    for a, b in zip(chunked[1], whole[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        model(data)
    assert (45, 40) not in saved  # no (rows, items) logits kept for the backward pass
