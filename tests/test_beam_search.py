"""Constrained beam search against exhaustive ranking, with a fake model scored from a random table."""

from __future__ import annotations

import pytest
import torch

from semid.beam_search import BeamSearchOutput, constrained_beam_search
from semid.errors import SemidError
from semid.trie import PrefixTrie


class TableModel:
    """Fake StepModel: logits of level l = table_l[prefix] + bias_l[query], fixed random numbers."""

    def __init__(self, sizes: list[int], num_queries: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.sizes = sizes
        self.tables, self.biases, prefixes = [], [], 1
        for v in sizes:
            self.tables.append(3 * torch.randn(prefixes, v, generator=g))
            self.biases.append(torch.randn(num_queries, v, generator=g))
            prefixes *= v
        self.start_calls = 0
        self.rows_seen: list[int] = []

    def start(self, queries: torch.Tensor):
        self.start_calls += 1
        self.rows_seen.append(queries.shape[0])
        state = (queries.clone(), torch.zeros_like(queries))  # (query id, prefix index) per row
        return self.tables[0][state[1]] + self.biases[0][queries], state

    def step(self, state, codes: torch.Tensor, level: int):
        queries, prefix = state
        self.rows_seen.append(queries.shape[0])
        prefix = prefix * self.sizes[level - 1] + codes
        return self.tables[level][prefix] + self.biases[level][queries], (queries, prefix)

    def select(self, state, rows: torch.Tensor):
        return tuple(t[rows] for t in state)

    def exhaustive(self, query: int, ids: torch.Tensor) -> torch.Tensor:
        """Summed per-level log-softmax score of every ID (N, L) for one query -> (N,)."""
        score = torch.zeros(ids.shape[0])
        prefix = torch.zeros(ids.shape[0], dtype=torch.int64)
        for level, v in enumerate(self.sizes):
            logits = self.tables[level][prefix] + self.biases[level][query]
            score += (
                torch.log_softmax(logits, dim=-1).gather(1, ids[:, level : level + 1]).squeeze(1)
            )
            prefix = prefix * v + ids[:, level]
        return score


def catalog(n: int, sizes: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.unique(
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in sizes], 1), dim=0
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_ranking(seed):
    sizes = [6, 5, 7]
    ids = catalog(60, sizes, seed)
    trie = PrefixTrie.from_codes(ids, sizes)
    model = TableModel(sizes, num_queries=4, seed=seed)
    k = 10
    out = constrained_beam_search(model, torch.arange(4), trie, num_beams=ids.shape[0], top_k=k)
    assert out.codes.shape == (4, k, 3) and out.log_probs.shape == (4, k)
    for q in range(4):
        scores = model.exhaustive(q, ids)
        best = scores.topk(k)
        assert out.codes[q].tolist() == ids[best.indices].tolist()
        torch.testing.assert_close(out.log_probs[q], best.values, rtol=0, atol=1e-5)


def test_returned_ids_are_valid_and_sorted_with_narrow_beams():
    sizes = [8, 8, 8]
    ids = catalog(150, sizes, seed=5)
    trie = PrefixTrie.from_codes(ids, sizes)
    out = constrained_beam_search(
        TableModel(sizes, 6, seed=5), torch.arange(6), trie, num_beams=4, top_k=3
    )
    assert trie.contains(out.codes.view(-1, 3)).all()
    assert (out.log_probs[:, 1:] <= out.log_probs[:, :-1]).all()
    for q in range(6):
        assert len({tuple(c) for c in out.codes[q].tolist()}) == 3  # no ID twice


def test_batched_equals_one_by_one():
    sizes = [7, 6, 5]
    ids = catalog(80, sizes, seed=3)
    trie = PrefixTrie.from_codes(ids, sizes)
    model = TableModel(sizes, num_queries=5, seed=3)
    batched = constrained_beam_search(model, torch.arange(5), trie, num_beams=6)
    for q in range(5):
        single = constrained_beam_search(model, torch.tensor([q]), trie, num_beams=6)
        assert torch.equal(single.codes[0], batched.codes[q])
        torch.testing.assert_close(single.log_probs[0], batched.log_probs[q])


def test_query_is_encoded_once_and_first_step_runs_on_batch_rows():
    sizes = [5, 5, 5]
    trie = PrefixTrie.from_codes(catalog(70, sizes, seed=4), sizes)
    model = TableModel(sizes, num_queries=3, seed=4)
    constrained_beam_search(model, torch.arange(3), trie, num_beams=4)
    assert model.start_calls == 1
    assert model.rows_seen == [3, 12, 12]  # B rows once, then B * beams


def test_fewer_ids_than_k_are_padded():
    sizes = [3, 3]
    ids = torch.tensor([[0, 1], [2, 2]])
    trie = PrefixTrie.from_codes(ids, sizes)
    model = TableModel(sizes, num_queries=2, seed=0)
    out = constrained_beam_search(model, torch.arange(2), trie, num_beams=5, top_k=4)
    assert out.codes.shape == (2, 4, 2)
    for q in range(2):
        assert sorted(out.codes[q, :2].tolist()) == ids.tolist()
        assert torch.isfinite(out.log_probs[q, :2]).all()
        assert (out.codes[q, 2:] == -1).all() and torch.isneginf(out.log_probs[q, 2:]).all()
    # more beams than the first level has codes: still the promised shape
    wide = constrained_beam_search(model, torch.arange(2), trie, num_beams=12)
    assert wide.codes.shape == (2, 12, 2) and isinstance(wide, BeamSearchOutput)


@pytest.mark.parametrize(
    ("beams", "k"), [(0, None), (3, 4), (3, 0), (5.0, None), (3, 2.0), (3, True)]
)
def test_bad_arguments(beams, k):
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1]]), [2, 2])
    with pytest.raises(SemidError, match="num_beams"):
        constrained_beam_search(
            TableModel([2, 2], 1), torch.arange(1), trie, num_beams=beams, top_k=k
        )


def test_vocabulary_mismatch_is_reported():
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1]]), [3, 2])
    with pytest.raises(SemidError, match="vocabulary"):
        constrained_beam_search(TableModel([2, 2], 1), torch.arange(1), trie, num_beams=2)
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1]]), [2, 3])  # the second level's, from step
    with pytest.raises(
        SemidError, match=r"model.step returned logits of shape \(2, 2\), expected \(2, 3\)"
    ):
        constrained_beam_search(TableModel([2, 2], 1), torch.arange(1), trie, num_beams=2)


def test_nan_logits_numpy_logits_and_an_empty_batch():
    """NaN logits would make every answer invalid in silence; numpy logits and no queries each
    get a clear outcome."""
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1], [1, 0]]), [2, 2])
    model = TableModel([2, 2], 2)
    model.biases[1][0] = float("nan")  # query 0 only: it gets no answer, query 1 its own
    out = constrained_beam_search(model, torch.arange(2), trie, num_beams=2)
    assert (out.codes[0] == -1).all() and (out.codes[1] >= 0).all()
    model.tables[1][:] = float("nan")  # every query: an error, not a silent empty result
    with pytest.raises(SemidError, match="the model's logits hold NaN for every query"):
        constrained_beam_search(model, torch.arange(2), trie, num_beams=2)
    numpy_model = TableModel([2, 2], 1)
    start = numpy_model.start
    numpy_model.start = lambda q: (start(q)[0].numpy(), start(q)[1])
    with pytest.raises(
        SemidError, match="model.start must return torch tensors of logits, got ndarray"
    ):
        constrained_beam_search(numpy_model, torch.arange(1), trie, num_beams=2)
    out = constrained_beam_search(TableModel([2, 2], 1), torch.arange(0), trie, num_beams=2)
    assert out.codes.shape == (0, 2, 2) and out.log_probs.shape == (0, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_excluded_ids_are_skipped_and_the_rest_ranked_exactly(seed):
    sizes = [6, 5, 7]
    ids = catalog(60, sizes, seed)
    trie = PrefixTrie.from_codes(ids, sizes)
    model = TableModel(sizes, num_queries=3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    # query 0: nothing excluded; query 1: a random third; query 2: every ID under the best first code
    best_first = int(model.exhaustive(2, ids).argmax())
    banned = [
        torch.empty(0, dtype=torch.long),
        torch.randperm(len(ids), generator=g)[:20],
        (ids[:, 0] == ids[best_first, 0]).nonzero().squeeze(1),
    ]
    leaves = trie.leaf_states(ids)
    width = max(len(b) for b in banned)
    exclude = torch.full((3, width + 2), -1)  # ragged rows, padded with -1, plus a repeat
    for q, rows in enumerate(banned):
        exclude[q, : len(rows)] = leaves[rows]
    exclude[1, -1] = exclude[1, 0]
    k = 10
    out = constrained_beam_search(model, torch.arange(3), trie, num_beams=k, exclude=exclude)
    for q, rows in enumerate(banned):
        # narrow beams may miss the exact top-k, but never return a banned ID or lose a beam
        returned = {tuple(c) for c in out.codes[q].tolist()}
        assert not returned & {tuple(c) for c in ids[rows].tolist()}
        assert torch.isfinite(out.log_probs[q]).all() and len(returned) == k
    wide = constrained_beam_search(
        model, torch.arange(3), trie, num_beams=len(ids), top_k=k, exclude=exclude
    )
    for q, rows in enumerate(banned):
        scores = model.exhaustive(q, ids)
        scores[rows] = float("-inf")
        best = scores.topk(k)
        assert wide.codes[q].tolist() == ids[best.indices].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_excluding_ids_equals_searching_a_trie_without_them(seed):
    sizes = [4, 3, 5]
    ids = catalog(40, sizes, seed)
    trie = PrefixTrie.from_codes(ids, sizes)
    model = TableModel(sizes, num_queries=1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    # whole subtrees (every ID under a first code) and scattered single IDs
    banned = (ids[:, 0] == ids[0, 0]) | (torch.rand(len(ids), generator=g) < 0.3)
    exclude = trie.leaf_states(ids[banned])[None]
    for beams in (1, 3, 8):
        out = constrained_beam_search(model, torch.arange(1), trie, beams, exclude=exclude)
        rest = PrefixTrie.from_codes(ids[~banned], sizes)
        plain = constrained_beam_search(model, torch.arange(1), rest, beams)
        assert torch.equal(out.codes, plain.codes)
        assert torch.allclose(out.log_probs, plain.log_probs)


def test_excluding_every_id_returns_padding():
    sizes = [3, 3]
    ids = catalog(6, sizes, seed=0)
    trie = PrefixTrie.from_codes(ids, sizes)
    exclude = trie.leaf_states(ids)[None]
    out = constrained_beam_search(
        TableModel(sizes, 1), torch.arange(1), trie, num_beams=4, exclude=exclude
    )
    assert (out.codes == -1).all() and torch.isinf(out.log_probs).all()


@pytest.mark.parametrize(
    "exclude, words",
    [
        (
            lambda n: [[n]],
            r"exclude holds N, which is no leaf state of this trie \(0..N-1, -1 pads\)",
        ),
        (lambda n: [[-2]], "exclude holds -2, which is no leaf state"),
        (lambda n: [0, 1], r"exclude must have shape \(1, M\), one row of leaf states per query"),
        (lambda n: [[0], [1]], r"got \(2, 1\)"),
        (lambda n: [[0.0]], "exclude must be an integer tensor of leaf states, got torch.float32"),
    ],
)
def test_an_exclude_of_another_shape_or_trie_is_refused(exclude, words):
    """A leaf state past this trie's (one of a grown index's trie) masked other IDs' prefixes."""
    sizes = [3, 3]
    trie = PrefixTrie.from_codes(catalog(6, sizes, seed=0), sizes)
    n = trie.num_ids
    words = words.replace("N-1", str(n - 1)).replace("N", str(n))
    model = TableModel(sizes, 1)
    with pytest.raises(SemidError, match=words):
        constrained_beam_search(model, torch.arange(1), trie, 4, exclude=torch.tensor(exclude(n)))
    out = constrained_beam_search(model, torch.arange(1), trie, 4, exclude=[[n - 1, -1]])
    assert (out.codes[0] >= 0).all()  # a list is read as a tensor
