"""PrefixTrie against a brute-force oracle: a set of ID tuples and the set of their prefixes."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semid.errors import SemidError
from semid.trie import PrefixTrie


def random_ids(n: int, sizes: list[int], seed: int) -> torch.Tensor:
    """Up to n unique random IDs (n', L) in a random order."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, v, (n,), generator=g) for v in sizes], dim=1)
    codes = torch.unique(codes, dim=0)
    return codes[torch.randperm(codes.shape[0], generator=g)]


def check_against_oracle(trie: PrefixTrie, ids: set[tuple[int, ...]], sizes: list[int]) -> None:
    """Every query of the trie agrees with the set of tuples, over the whole code space."""
    levels = len(sizes)
    assert trie.num_ids == len(ids)
    assert trie.all_codes().tolist() == sorted(list(t) for t in ids)
    # Walk every prefix of the full code space level by level; states come from advance.
    frontier = {(): 0}
    for level in range(levels):
        prefixes = list(frontier)
        states = torch.tensor([frontier[p] for p in prefixes], dtype=torch.int64)
        mask = trie.allowed_mask(states, level)
        assert mask.shape == (len(prefixes), sizes[level]) and mask.dtype == torch.bool
        valid_prefixes = {t[: level + 1] for t in ids}
        nxt = {}
        for row, prefix in enumerate(prefixes):
            codes = torch.arange(sizes[level])
            new_states = trie.advance(states[row].repeat(sizes[level]), level, codes)
            for c in range(sizes[level]):
                child = (*prefix, c)
                expected = child in valid_prefixes
                assert bool(mask[row, c]) == expected, (prefix, c)
                assert (int(new_states[c]) >= 0) == expected, (prefix, c)
                if expected:
                    nxt[child] = int(new_states[c])
        assert len(set(nxt.values())) == len(nxt)  # distinct prefixes get distinct states
        frontier = nxt
    space = torch.tensor(list(itertools.product(*[range(v) for v in sizes])), dtype=torch.int64)
    expected = torch.tensor([tuple(r) in ids for r in space.tolist()])
    assert torch.equal(trie.contains(space), expected)


catalogs = st.tuples(
    st.lists(st.integers(1, 5), min_size=1, max_size=3),  # codebook sizes
    st.integers(0, 40),  # number of draws
    st.integers(0, 2**16),  # seed
    st.sampled_from([0, 64, 1 << 20]),  # dense budget: none, some levels, all small levels
)


@settings(max_examples=40, deadline=None)
@given(catalogs)
def test_trie_matches_oracle(catalog):
    sizes, n, seed, dense_bytes = catalog
    codes = random_ids(n, sizes, seed)
    trie = PrefixTrie.from_codes(codes, sizes, dense_bytes=dense_bytes)
    check_against_oracle(trie, {tuple(r) for r in codes.tolist()}, sizes)


@settings(max_examples=25, deadline=None)
@given(catalogs, st.integers(0, 2**16))
def test_insert_matches_oracle(catalog, seed2):
    sizes, n, seed, dense_bytes = catalog
    everything = random_ids(2 * n, sizes, seed)
    first, second = everything[: everything.shape[0] // 2], everything[everything.shape[0] // 2 :]
    trie = PrefixTrie.from_codes(first, sizes, dense_bytes=dense_bytes)
    assert trie.insert_(second) is trie
    check_against_oracle(trie, {tuple(r) for r in everything.tolist()}, sizes)


def test_dense_and_csr_agree_on_random_states():
    sizes = [16, 16, 16]
    codes = random_ids(600, sizes, seed=1)
    dense = PrefixTrie.from_codes(codes, sizes, dense_bytes=1 << 20)
    sparse = PrefixTrie.from_codes(codes, sizes, dense_bytes=0)
    assert all(t is not None for t in dense.dense) and all(t is None for t in sparse.dense)
    g = torch.Generator().manual_seed(0)
    for level in range(3):
        states = torch.randint(
            -1, dense.num_states(level) + 2, (50,), generator=g
        )  # includes invalid ones
        steps = torch.randint(-1, 18, (50,), generator=g)
        assert torch.equal(dense.allowed_mask(states, level), sparse.allowed_mask(states, level))
        assert torch.equal(
            dense.advance(states, level, steps), sparse.advance(states, level, steps)
        )


def test_invalid_states_and_codes_are_rejected_softly():
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1], [1, 0]]), [2, 2])
    assert not trie.allowed_mask(torch.tensor([-1]), 0).any()
    assert trie.advance(torch.tensor([0, 0, -1]), 0, torch.tensor([5, -1, 0])).tolist() == [
        -1,
        -1,
        -1,
    ]
    assert trie.contains(torch.tensor([[0, 1], [0, 2], [-1, 0]])).tolist() == [True, False, False]
    with pytest.raises(SemidError, match="codes must be an integer tensor, got torch.float32"):
        trie.contains(torch.tensor([[0.9, 1.2]]))  # it was read as [0, 1]


def test_small_dtypes_and_bytes_per_id():
    codes = random_ids(20_000, [256, 256, 256], seed=0)
    trie = PrefixTrie.from_codes(codes, [256, 256, 256])
    assert trie.edge_codes[-1].dtype == torch.uint8
    assert trie.nbytes / trie.num_ids <= 16
    tables = [*trie.row_ptr, *trie.edge_codes, *trie.dense, *trie.dense_allowed]
    assert any(t is not None for t in trie.dense_allowed)  # a dense level: its allowed codes count
    assert trie.nbytes == sum(t.numel() * t.element_size() for t in tables if t is not None)


def test_empty_trie_then_insert():
    trie = PrefixTrie.from_codes(torch.zeros(0, 2, dtype=torch.int64), [3, 3])
    assert trie.num_ids == 0 and not trie.allowed_mask(torch.tensor([0]), 0).any()
    assert trie.all_codes().shape == (0, 2)
    trie.insert_(torch.tensor([[2, 1]]))
    assert trie.all_codes().tolist() == [[2, 1]]


def test_to_keeps_contents():
    codes = random_ids(50, [4, 4, 4], seed=3)
    trie = PrefixTrie.from_codes(codes, [4, 4, 4])
    moved = trie.to("cpu")
    assert torch.equal(moved.all_codes(), trie.all_codes()) and moved.nbytes == trie.nbytes


@pytest.mark.parametrize(
    ("codes", "sizes", "message"),
    [
        (torch.tensor([[0, 4]]), [4, 4], "out of range"),
        (torch.tensor([[0, -1]]), [4, 4], "out of range"),
        (torch.tensor([[0, 1], [2, 3], [0, 1]]), [4, 4], "duplicate"),
        (torch.tensor([0, 1]), [4, 4], "shape"),
        (torch.tensor([[0, 1, 2]]), [4, 4], "shape"),
        (torch.tensor([[0.0, 1.0]]), [4, 4], "integer"),
        (torch.tensor([[0, 1]]), [], "codebook_sizes"),
    ],
)
def test_build_errors(codes, sizes, message):
    with pytest.raises(SemidError, match=message):
        PrefixTrie.from_codes(codes, sizes)


def test_insert_errors_leave_trie_unchanged():
    trie = PrefixTrie.from_codes(torch.tensor([[0, 1], [1, 1]]), [2, 2])
    with pytest.raises(SemidError, match="already in the trie"):
        trie.insert_(torch.tensor([[1, 0], [1, 1]]))
    with pytest.raises(SemidError, match="duplicate"):
        trie.insert_(torch.tensor([[1, 0], [1, 0]]))
    with pytest.raises(SemidError, match="out of range"):
        trie.insert_(torch.tensor([[2, 0]]))
    assert trie.all_codes().tolist() == [[0, 1], [1, 1]]
    with pytest.raises(SemidError, match="level"):
        trie.allowed_mask(torch.tensor([0]), 2)


def test_huge_code_space_uses_the_stable_sort_path():
    sizes = [65536] * 4  # 2**64 IDs: no int64 mixed-radix key, so the per-level stable sorts run
    codes = torch.randint(0, 4, (300, 4)) * 16384 + torch.randint(0, 2, (300, 4))
    codes = torch.unique(codes, dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(0))]
    trie = PrefixTrie.from_codes(codes, sizes)
    assert trie.all_codes().tolist() == sorted(codes.tolist())
    assert trie.contains(codes).all() and trie.edge_codes[0].dtype == torch.int32


@pytest.mark.parametrize("dense_bytes", [0, 1 << 20])
def test_leaf_ranges_cover_exactly_the_ids_under_each_prefix(dense_bytes):
    sizes = [5, 4, 6]
    codes = random_ids(70, sizes, seed=4)
    trie = PrefixTrie.from_codes(codes, sizes, dense_bytes=dense_bytes)
    ordered = trie.all_codes()
    assert torch.equal(trie.leaf_states(ordered), torch.arange(len(ordered)))
    for level in range(3):
        prefixes = torch.unique(ordered[:, : level + 1], dim=0)
        states = torch.zeros(len(prefixes), dtype=torch.long)
        for lvl in range(level + 1):
            states = trie.advance(states, lvl, prefixes[:, lvl])
        lo, hi = trie.leaf_range(torch.cat([states, torch.tensor([-1])]), level)
        for i, prefix in enumerate(prefixes.tolist()):
            under = (ordered[:, : level + 1] == torch.tensor(prefix)).all(1).nonzero().squeeze(1)
            assert (int(lo[i]), int(hi[i])) == (int(under.min()), int(under.max()) + 1)
        assert (int(lo[-1]), int(hi[-1])) == (0, 0)  # an invalid state covers nothing
        # prefix_state inverts leaf_range: each leaf maps to the state whose range holds it
        leaves = torch.arange(len(ordered))
        owner = trie.prefix_state(leaves, level)
        walked = torch.zeros(len(ordered), dtype=torch.long)
        for lvl in range(level + 1):
            walked = trie.advance(walked, lvl, ordered[:, lvl])
        assert torch.equal(owner, walked)
        lo, hi = trie.leaf_range(owner, level)
        assert ((lo <= leaves) & (leaves < hi)).all()
        assert trie.prefix_state(torch.tensor([-1, len(ordered)]), level).tolist() == [-1, -1]
