"""rqkmeans: options, oracles for encoding and distances, refinement, parity with faiss."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest
import torch

import semid.quantizers.rqkmeans as rqk
from semid.errors import SemidError
from semid.quantization import build_quantizer
from semid.quantizers.rqkmeans import ResidualKMeans, progressive_kmeans


def blobs(n: int = 300, d: int = 8, centers: int = 12, seed: int = 0) -> torch.Tensor:
    """(n, d) float32 Gaussian clusters of different spreads."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * 3
    which = torch.randint(0, centers, (n,), generator=g)
    spread = 0.2 + torch.rand(centers, generator=g)
    return mu[which] + spread[which, None] * torch.randn(n, d, generator=g)


def mse(q: ResidualKMeans, x: torch.Tensor) -> float:
    return float((x - q.decode(q.encode(x))).pow(2).mean())


def test_defaults_and_options_round_trip():
    q = build_quantizer("rqkmeans:3x16")
    assert isinstance(q, ResidualKMeans)
    assert (q.clustering, q.beam, q.refine) == ("pd", 1, 5)
    q = build_quantizer("rqkmeans:3x16,beam=4,kmeans=lloyd,refine=0")
    assert (q.clustering, q.beam, q.refine) == ("lloyd", 4, 0)
    assert str(q.spec) == "rqkmeans:3x16,beam=4,kmeans=lloyd,refine=0"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rqkmeans:3x16,bem=4", "unknown option"),
        ("rqkmeans:3x16,beam=0", "beam >= 1"),
        ("rqkmeans:3x16,beam=two", "not a valid int"),
        ("rqkmeans:3x16,refine=-1", "refine >= 0"),
        ("rqkmeans:3x16,kmeans=spectral", "kmeans in"),
    ],
)
def test_bad_options_raise(spec, message):
    with pytest.raises(SemidError, match=message):
        build_quantizer(spec)


def test_greedy_fit_is_residual_kmeans():
    """Without refinement, each level's codes are the k-means centroids of the residuals left (the
    first level's of x about its mean)."""
    x = blobs()
    q = build_quantizer("rqkmeans:2x8,refine=0").fit(x, seed=1)
    first = progressive_kmeans(x - x.mean(0), 8, seed=1) + x.mean(0)
    torch.testing.assert_close(q.codebooks[0], first)
    residual = x - first[torch.cdist(x, first).argmin(1)]
    torch.testing.assert_close(q.codebooks[1], progressive_kmeans(residual, 8, seed=2))


def test_greedy_encoding_matches_brute_force():
    x = blobs()
    q = build_quantizer("rqkmeans:3x8").fit(x, niter=5)
    residual, expected = x.clone(), []
    for book in q.codebooks:
        expected.append(torch.cdist(residual, book).argmin(1))
        residual -= book[expected[-1]]
    assert torch.equal(q.encode(x), torch.stack(expected, 1))


@pytest.mark.parametrize("spec", ["rqkmeans:2x16", "rqkmeans:2x16,beam=4,kmeans=lloyd"])
def test_vectors_sharing_a_large_offset_get_the_ids_of_the_centred_ones(spec):
    """||x||^2 - 2 x.c + ||c||^2 in float32 cancels for vectors far from the origin: with an offset
    of 1e4 (a hundred thousand times their spread's square root) they took 13 distinct IDs of 300."""
    x = blobs(n=300, d=12)
    centred = build_quantizer(spec).fit(x, seed=0, niter=5)
    far = build_quantizer(spec).fit(x + 1e4, seed=0, niter=5)
    ids = [len(set(map(tuple, q.encode(v).tolist()))) for q, v in ((centred, x), (far, x + 1e4))]
    assert ids[1] >= 0.9 * ids[0], ids
    assert far.reconstruction_error(x + 1e4) <= 1.2 * centred.reconstruction_error(x)
    codes = far.encode(x + 1e4)
    residual = x + 1e4 - far.codebooks[0][codes[:, 0]]  # after the first of two levels
    expected = torch.cdist(residual.double(), far.codebooks[1].double()).pow(2).float()
    torch.testing.assert_close(far.last_level_distances(x + 1e4), expected, atol=1e-3, rtol=1e-4)


def test_full_beam_is_exhaustive_search():
    """With the beam as wide as all prefixes, encoding finds the best of all K^L code tuples."""
    x = blobs(n=100)
    q = build_quantizer("rqkmeans:3x4,beam=16,refine=0").fit(x, niter=5)
    tuples = torch.tensor(list(itertools.product(range(4), repeat=3)))  # (64, 3)
    best = torch.cdist(x, q.decode(tuples)).argmin(1)
    torch.testing.assert_close(
        (x - q.decode(q.encode(x))).pow(2).sum(1), (x - q.decode(tuples[best])).pow(2).sum(1)
    )


def test_chunked_encoding_gives_the_same_codes(monkeypatch):
    x = blobs()
    q = build_quantizer("rqkmeans:3x8,beam=3").fit(x, niter=5)
    codes = q.encode(x)
    monkeypatch.setattr(rqk, "_CHUNK_FLOATS", 7 * 3 * 8)  # chunks of 7 rows
    assert torch.equal(q.encode(x), codes)


def test_refinement_never_hurts_the_training_fit():
    x = blobs(n=400, d=16)
    greedy = build_quantizer("rqkmeans:3x8,refine=0").fit(x, seed=0)
    refined = build_quantizer("rqkmeans:3x8,refine=3").fit(x, seed=0)
    assert mse(refined, x) <= mse(greedy, x)


@pytest.mark.parametrize("levels", range(1, 9))
def test_decoding_a_block_of_rows_at_a_time_gives_the_gathered_sum_bit_for_bit(levels, monkeypatch):
    """Decoding in blocks of rows (not gathering all levels of all rows at once) gives the same
    bits as the gathered sum used before: the refinement's reconstructions, so the IDs, are as
    they were."""
    monkeypatch.setattr(rqk, "_CHUNK_FLOATS", 7 * levels * 24)  # blocks of 7 rows: 72 of them
    g = torch.Generator().manual_seed(levels)
    books = torch.randn(levels, 16, 24, generator=g)
    codes = torch.randint(0, 16, (500, levels), generator=g)
    gathered = books[torch.arange(levels), codes].sum(1)
    assert torch.equal(rqk._sum_of_codewords(books, codes), gathered)
    assert rqk._sum_of_codewords(books, codes[:0]).shape == (0, 24)


def test_refinement_in_place_gives_the_least_squares_update_bit_for_bit():
    """One refinement sweep, written in place to save memory, equals the plain formula: each
    level's codes become the mean of x - recon + that level's codeword over their rows."""
    x = blobs(n=400, d=16)
    q = build_quantizer("rqkmeans:3x8,refine=0").fit(x, seed=0)
    codes = q.encode(x)
    books = q.codebooks.clone()
    recon = books[torch.arange(3), codes].sum(1)
    for level, book in enumerate(books):
        idx = codes[:, level]
        sums = torch.zeros_like(book).index_add_(0, idx, x - recon + book[idx])
        counts = torch.bincount(idx, minlength=8)[:, None]
        new = torch.where(counts > 0, sums / counts.clamp_min(1), book)
        recon += new[idx] - book[idx]
        book.copy_(new)
    q._refine_codebooks_(x, codes)
    assert torch.equal(q.codebooks, books)


def test_last_level_distances_match_brute_force():
    x = blobs()
    q = build_quantizer("rqkmeans:3x8,beam=2").fit(x, niter=5)
    codes = q.encode(x)
    prefix = q.codebooks[0][codes[:, 0]] + q.codebooks[1][codes[:, 1]]
    expected = torch.cdist(x - prefix, q.codebooks[2]).pow(2)
    torch.testing.assert_close(q.last_level_distances(x), expected, atol=1e-4, rtol=1e-4)


def test_single_level_and_fewer_items_than_codes():
    x = blobs(n=5)
    q = build_quantizer("rqkmeans:1x8").fit(x)
    assert q.encode(x).shape == (5, 1)
    assert mse(q, x) < 1e-10  # every item gets a code of its own
    assert q.last_level_distances(x).shape == (5, 8)


def test_refit_with_another_dimension_is_refused():
    q = build_quantizer("rqkmeans:2x4").fit(blobs(d=8))
    with pytest.raises(SemidError, match="dimension"):
        q.fit(blobs(d=6))


def test_decode_rejects_float_codes():
    q = build_quantizer("rqkmeans:2x4").fit(blobs())
    with pytest.raises(SemidError, match="must be an integer tensor"):
        q.decode(torch.zeros(3, 2))


def test_progress_bar_is_optional(capsys):
    build_quantizer("rqkmeans:2x4,refine=1").fit(blobs(), progress=True)
    assert "fit rqkmeans:2x4,refine=1" in capsys.readouterr().err


@pytest.mark.parametrize("levels, nbits", [(2, 4), (3, 3)])
def test_parity_with_faiss_residual_quantizer(levels, nbits):
    """Same budget, same data: our MSE is at most 5% above the better of faiss ResidualQuantizer's
    default training (beam 5) and its greedy training (beam 1), on the training data as both are
    used for IDs. (Beam training is the weaker of the two on these blobs.)"""
    x = blobs(n=2000, d=16, centers=40)
    xn = x.numpy()
    faiss_mse = []
    for beam in (5, 1):
        rq = faiss.ResidualQuantizer(16, levels, nbits)
        rq.max_beam_size = beam
        rq.train(xn)
        faiss_mse.append(float(np.mean((xn - rq.decode(rq.compute_codes(xn))) ** 2)))
    ours = mse(build_quantizer(f"rqkmeans:{levels}x{2**nbits}").fit(x), x)
    assert ours <= 1.05 * min(faiss_mse), (ours, faiss_mse)


def test_fewer_items_than_dimensions_are_clustered_in_the_dimensions_they_span():
    """With fewer items than dimensions, faiss' progressive-dimension k-means cannot run its PCA,
    and plain Lloyd in all dimensions put most items' residuals in one code: 360 documents' MiniLM
    vectors got 51 distinct IDs of 3x16 (level perplexities 14.0, 1.6, 1.4). Clustered in the span
    of the centred items, the level spread over their codes as with more items."""
    g = torch.Generator().manual_seed(0)
    topics = 0.5 * torch.randn(12, 384, generator=g).repeat_interleave(25, 0)
    x = torch.nn.functional.normalize(torch.randn(300, 384, generator=g) + topics, dim=1)
    codes = build_quantizer("rqkmeans:3x16").fit(x, seed=0).encode(x)
    lloyd = build_quantizer("rqkmeans:3x16,kmeans=lloyd").fit(x, seed=0).encode(x)

    def perplexity(column: torch.Tensor) -> float:
        p = torch.bincount(column, minlength=16).double() / len(column)
        return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))

    assert min(perplexity(codes[:, level]) for level in range(3)) > 12  # of 16
    assert perplexity(lloyd[:, 2]) < 6  # what the fallback to plain Lloyd gave
    assert len({tuple(row) for row in codes.tolist()}) > 280  # of 300 items
    span = rqk._in_span(x[:40], lambda coords: coords[:5])  # centroids map back exactly
    torch.testing.assert_close(span, x[:5], rtol=0, atol=1e-5)
    for rows in (x[:40], x[:, :16]):  # float32 centroids on both paths, as faiss gives them
        assert progressive_kmeans(rows.double(), 4, seed=0).dtype == torch.float32


def test_progressive_kmeans_gives_the_same_centroids_whatever_faiss_thread_count():
    """faiss' progressive-dimension clustering summed in a thread-dependent order: 1 and 2
    threads gave centroids apart in the last bits, which on MovieLens-1M grew into other IDs for
    every item (CPU affinity or OMP_NUM_THREADS decide the count)."""
    x = torch.randn(1682, 384, generator=torch.Generator().manual_seed(0))
    threads = faiss.omp_get_max_threads()
    try:
        centroids = []
        for count in (1, 2):
            faiss.omp_set_num_threads(count)
            centroids.append(progressive_kmeans(x, 256, niter=5, seed=0))
            assert faiss.omp_get_max_threads() == count  # as the caller set it
    finally:
        faiss.omp_set_num_threads(threads)
    assert torch.equal(*centroids)
