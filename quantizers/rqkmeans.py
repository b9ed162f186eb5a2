"""Residual k-means (``rqkmeans``): one faiss k-means codebook per level, fitted on the residuals
left by the levels before it, then refined by least squares for fixed codes; encoding is greedy
or a beam search over levels. Residual quantization: Juang & Gray 1982; refining the codebooks
for fixed codes and re-encoding, as in stacked quantizers (Martinez et al. 2014).

Spec options, e.g. ``rqkmeans:3x256,beam=8,refine=4,kmeans=pd``:
- ``kmeans``: ``pd`` (faiss progressive-dimension k-means: cluster in the top PCA dimensions first,
  then add dimensions; far better optima than random-init Lloyd when there are few points per
  code, as with a few thousand items and 256 codes; with no more items than dimensions it runs
  in the dimensions the centred items span) or ``lloyd`` (plain faiss k-means);
- ``beam``: encode-time beam width over levels (1 = greedy nearest code per level);
- ``refine``: rounds of codebook refinement after the greedy fit (one least-squares sweep over
  the levels for fixed codes, then re-encoding; 0 = plain residual k-means).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import faiss
import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from semid.errors import SemidError
from semid.kmeans import faiss_seed, kmeans
from semid.progress import progress_bar
from semid.quantization import Quantizer, QuantizerSpec, fits_on_the_cpu, register_quantizer

# Encode-time work is chunked so that a (rows, beam, K) score tensor stays about this many floats.
_CHUNK_FLOATS = 1 << 24


@register_quantizer("rqkmeans")
class ResidualKMeans(Quantizer):
    """Residual k-means: codebooks (L, K, D) fitted level by level with faiss k-means."""

    # Option defaults; the measurements behind them are in benchmarks/results/quantizers.md.
    OPTIONS = {"kmeans": "pd", "beam": 1, "refine": 5}

    def __init__(self, spec: QuantizerSpec, dim: int | None = None) -> None:
        spec.check_options(list(self.OPTIONS))
        self.beam = spec.option("beam", self.OPTIONS["beam"], int)
        self.refine = spec.option("refine", self.OPTIONS["refine"], int)
        self.clustering = spec.option("kmeans", self.OPTIONS["kmeans"])
        if self.beam < 1 or self.refine < 0 or self.clustering not in _KMEANS:
            raise SemidError(
                f"bad options in {spec}: need beam >= 1, refine >= 0, kmeans in {', '.join(_KMEANS)}"
            )
        super().__init__(spec, dim)

    def _build(self, dim: int) -> None:
        self.register_buffer("codebooks", torch.zeros(self.levels, self.spec.codebook_size, dim))

    @torch.no_grad()
    @fits_on_the_cpu
    def fit(
        self,
        x: Tensor,
        *,
        seed: int = 0,
        niter: int = 10,
        progress: bool | None = None,
        **unknown: Any,
    ) -> ResidualKMeans:
        """Fit codebooks on x (N, D): greedy residual k-means, then `refine` refinement rounds."""
        if unknown:
            raise SemidError(f"unknown fit option(s) {', '.join(sorted(unknown))}; rqkmeans takes "
                             "seed, niter and progress (its epochs are k-means iterations: niter)")  # fmt: skip
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SemidError(f"seed must be an integer, got {seed!r}")
        if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
            raise SemidError(f"niter must be an integer >= 1, got {niter!r}")
        x = self.check_input(x)
        self.build(x.shape[1])
        x = x.to(self.codebooks.device)
        k = self.spec.codebook_size
        if progress is None:  # a bar only when the fit takes a while and someone is watching
            progress = x.shape[0] * k * x.shape[1] >= 1 << 32 and sys.stderr.isatty()
        bar = progress_bar(
            total=self.levels + self.refine, desc=f"fit {self.spec}", disable=not progress
        )
        residual = x
        # level 0 clusters x about its mean: float32 k-means loses the differences of vectors that
        # share a large offset (||x||^2 - 2 x.c + ||c||^2 cancels); later levels' residuals are
        # centred already
        center = x.mean(0)
        for level in range(self.levels):
            book, fit_kmeans = self.codebooks[level], _KMEANS[self.clustering]
            if level == 0:
                centred = x - center
                book.copy_(fit_kmeans(centred, k, niter=niter, seed=seed) + center)
                nearest = book[_squared_distances(centred, book - center).argmin(1)]
                del centred
            else:
                book.copy_(fit_kmeans(residual, k, niter=niter, seed=seed + level))
                nearest = book[_squared_distances(residual, book).argmin(1)]
            # in place from level 1 on: level 0's residual is x itself
            residual = residual - nearest if level == 0 else residual.sub_(nearest)
            del nearest
            bar.update()
        del residual  # (N, D) no longer needed: it would stay alive through the refinement
        self.initted.fill_(True)
        codes = self.encode(x)  # with beam > 1 these differ from the greedy codes above
        best = (_mse(x, self.decode(codes)), self.codebooks.clone())
        for _ in range(self.refine):
            self._refine_codebooks_(x, codes)
            codes = self.encode(x)
            best = min(
                best, (_mse(x, self.decode(codes)), self.codebooks.clone()), key=lambda b: b[0]
            )
            bar.update()
        bar.close()
        self.codebooks.copy_(best[1])  # re-encoding after a refinement may (rarely) not improve
        return self

    @torch.no_grad()
    def _refine_codebooks_(self, x: Tensor, codes: Tensor) -> None:
        """One block-coordinate sweep for fixed codes (N, L), in place: each level's codes become
        the mean of what the other levels leave unexplained (least squares for that level)."""
        recon = self.decode(codes)
        for level, book in enumerate(self.codebooks):
            idx = codes[:, level]
            # (N, D) residual without this level's contribution, x - recon + book[idx], built in
            # place: the fit's memory peaks here
            target = torch.sub(x, recon)
            target += book[idx]
            sums = torch.zeros_like(book).index_add_(0, idx, target)
            del target
            counts = torch.bincount(idx, minlength=book.shape[0])[:, None]
            new = torch.where(counts > 0, sums / counts.clamp_min(1), book)  # unused codes stay
            # the same differences as new[idx] - book[idx], gathered once
            recon += (new - book)[idx]
            book.copy_(new)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, L) int64 of x (N, D), by beam search over levels (greedy when beam=1)."""
        self.check_fitted()
        x = self.check_input(x, empty_ok=True).to(self.codebooks.device)
        rows = max(1, _CHUNK_FLOATS // (self.beam * self.spec.codebook_size))
        return torch.cat([self._beam_encode(chunk) for chunk in x.split(rows)])

    def _beam_encode(self, x: Tensor) -> Tensor:
        """Beam search for one chunk x (n, D): keep the `beam` best partial codes per row."""
        n, k = x.shape[0], self.spec.codebook_size
        residual = x[:, None, :]  # (n, B, D), B grows from 1 to the beam width
        error = torch.zeros(n, 1, dtype=x.dtype, device=x.device)  # (n, B), see below
        codes = torch.zeros(n, 1, 0, dtype=torch.long, device=x.device)  # (n, B, levels so far)
        center = self.codebooks[0].mean(0)
        for level, book in enumerate(self.codebooks):
            # error holds ||r||^2 - ||x - m||^2; adding ||c||^2 - 2 r.c gives
            # ||r - c||^2 - ||x - m||^2, so beams are ranked by their true error without ever
            # computing ||r||^2. Level 0 is scored about its codebook's mean m (vectors far from the
            # origin would lose their differences to rounding): its one beam per row is r = x - m.
            shifted = book - center if level == 0 else book
            scores = error[:, :, None] + (shifted * shifted).sum(1)  # (n, B, K)
            scores -= (2 * (residual - center if level == 0 else residual)) @ shifted.T
            width = 1 if level == self.levels - 1 else min(self.beam, scores.shape[1] * k)
            error, flat = rearrange(scores, "n b k -> n (b k)").topk(width, dim=1, largest=False)
            del scores
            parent, code = flat // k, flat % k  # (n, B')
            keep = parent[:, :, None]
            codes = torch.cat([codes.gather(1, keep.expand(-1, -1, level)), code[:, :, None]], 2)
            residual = residual.gather(1, keep.expand(-1, -1, x.shape[1]))
            residual -= book[code]
        return codes[:, 0]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructions (N, D): the sum over levels of each code's codebook vector."""
        self.check_fitted()
        codes = self.check_codes(codes, self.codebooks.device)
        return _sum_of_codewords(self.codebooks, codes)

    @torch.no_grad()
    def last_level_distances(self, x: Tensor) -> Tensor:
        """Squared distances (N, K) from each row's residual after L-1 levels to the last codebook."""
        codes = self.encode(x)
        x = self.check_input(x, empty_ok=True).to(self.codebooks.device)
        residual = torch.sub(x, _sum_of_codewords(self.codebooks[:-1], codes[:, :-1]))
        return _squared_distances(residual, self.codebooks[-1])


def progressive_kmeans(x: Tensor, k: int, *, niter: int = 10, seed: int = 0) -> Tensor:
    """Centroids (k, D) of x (N, D) by faiss progressive-dimension k-means (PCA first), seeded."""
    if x.shape[0] <= k:  # too few points to cluster: kmeans() repeats points to fill k
        return kmeans(x, k, niter=niter, seed=seed)
    if x.shape[0] <= x.shape[1]:  # faiss' PCA step needs more points than dimensions
        return _in_span(x, partial(progressive_kmeans, k=k, niter=niter, seed=seed))
    xn = np.ascontiguousarray(x.detach().cpu().float().numpy())
    params = faiss.ProgressiveDimClusteringParameters()
    params.niter, params.seed = niter, faiss_seed(seed)
    # small catalogues are normal here; faiss would warn on stderr
    params.min_points_per_centroid = 1
    clus = faiss.ProgressiveDimClustering(xn.shape[1], k, params)
    with one_faiss_thread():
        clus.train(xn.shape[0], faiss.swig_ptr(xn), faiss.ProgressiveDimIndexFactory())
    return torch.from_numpy(faiss.vector_to_array(clus.centroids).reshape(k, -1))


def _in_span(x: Tensor, cluster: Callable[[Tensor], Tensor]) -> Tensor:
    """``cluster``'s centroids of x (N, D), N <= D, computed in the N - 1 dimensions its centred
    points span, then mapped back: the same distances, so the same clustering, in fewer dimensions
    than points. Plain Lloyd in all D dimensions left few points per code nearly orthogonal to
    each other: 360 documents' level-1 residuals (MiniLM, 384-d) went 344 to one code and one each
    to the others."""
    x64 = x.detach().cpu().double()
    center = x64.mean(0)
    _, _, basis = torch.linalg.svd(x64 - center, full_matrices=False)  # (N, D), rows orthonormal
    basis = basis[: x.shape[0] - 1]
    coords = ((x64 - center) @ basis.T).float()
    return (cluster(coords).double() @ basis + center).float()  # float32, as faiss gives


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """Within: faiss computes on one thread. Its progressive-dimension clustering adds up its
    sums in an order that depends on the thread count, and the last-bit differences grow into
    another clustering (MovieLens-1M's 3,706 items at 3x256: every ID changed between 1 and 2
    threads, which CPU affinity or OMP_NUM_THREADS set), so the IDs would depend on the machine's
    thread settings."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


_KMEANS = {"pd": progressive_kmeans, "lloyd": kmeans}


def _squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """Exact squared L2 distances (N, K) between rows of x (N, D) and centroids (K, D) (in float32:
    give both about a common centre when they lie far from the origin)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    return d.clamp_min_(0)


def _sum_of_codewords(codebooks: Tensor, codes: Tensor) -> Tensor:
    """(N, D): the sum over levels of codebooks (L, K, D) at codes (N, L), gathered and summed a
    block of rows at a time (all rows at once would hold an (N, L, D) tensor): each row's sum is
    the same as ``codebooks[levels, codes].sum(1)`` gives, which the tests compare bit for bit
    (adding level by level would not be: torch sums five or more levels in another order)."""
    levels = torch.arange(codebooks.shape[0], device=codes.device)
    total = codebooks.new_empty(codes.shape[0], codebooks.shape[2])
    rows = max(1, _CHUNK_FLOATS // max(1, codebooks.shape[0] * codebooks.shape[2]))
    for start in range(0, codes.shape[0], rows):
        total[start : start + rows] = codebooks[levels, codes[start : start + rows]].sum(1)
    return total


def _mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared reconstruction error per coordinate."""
    error = torch.sub(x, x_hat)
    return float(error.square_().mean())


__all__ = ["ResidualKMeans", "progressive_kmeans"]
