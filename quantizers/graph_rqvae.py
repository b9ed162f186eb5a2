"""``graph_rqvae``: the Graph RQ-VAE of MMGRec (Liu et al. 2024): content plus collaborative signal.

Each item is represented by its content embedding(s), one tensor per modality, next to the same
features propagated over the user-item graph of the TRAINING interactions (LightGCN-style, see
`semid.graph`; spec option ``hops``, default 2). Both halves are centred and scaled per modality
to unit mean squared norm, concatenated, and quantized by the RQ-VAE of `semid.quantizers.rqvae`
(whose spec options apply too). LightGCN propagation has no weights and is linear, so it is done
once before training: a learned first layer applied after it equals one applied before it.

After ``fit`` the propagated features of the fitted items are kept in a buffer, so ``encode`` on
the same items (in any order, found by a fingerprint of their content) gives the same codes after
``save_pretrained``/``from_pretrained``. Twins, fitted items of identical content (a catalogue
listing one film twice), cannot be told apart by content: the twins of one batch take the fitted
twins in batch order (in fit order, each its own), and a twin encoded alone is the first. A row
a little off a fitted item's content (the item re-embedded in bfloat16, or on another device) is
still that item. A NEW item, or one with no training interaction, is encoded from content only:
its collaborative half is its own content, exactly as the propagation treats items without edges.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from semid.errors import SemidError
from semid.graph import propagate_item_features
from semid.kmeans import nearest
from semid.quantization import QuantizerSpec, as_embeddings, register_quantizer
from semid.quantizers.rqvae import RQVAE

_FINGERPRINT_DIM = 16
# A row is a fitted item when its fingerprint lies within this share of the fitted fingerprints'
# spread (mean squared distance to their mean) of that item's: re-embedded in lower precision
# (bfloat16: up to 1.4e-5 on MovieLens-100k's texts) it still is, while distinct items, even near
# variants (a cosine similarity of 0.9999 between MiniLM vectors is about 4e-4), stay new items.
_MATCH_SHARE = 1e-4
# Fitted items whose fingerprints lie within this share of their mean squared norm are twins
# (identical content, up to the rounding of the projection), but no farther apart than
# _MATCH_SHARE of their spread (vectors that share a large offset have a large norm and a small
# spread: distinct items would be twins) unless that is below _ROUNDING_SHARE of the squared norm
# (a few hundred float32 ulps: identical items' rounding, as when every item is the same).
_TWIN_SHARE = 1e-6
_ROUNDING_SHARE = 1e-10


class Interactions(Protocol):
    """What fit needs from an interaction log (e.g. ``leave_one_out(log).train``)."""

    users: Tensor  # (E,) int64
    items: Tensor  # (E,) int64
    num_users: int
    num_items: int


@register_quantizer("graph_rqvae")
class GraphRQVAE(RQVAE):
    """RQ-VAE over [content, graph-propagated content]; ``fit(x_or_list, interactions=train_log)``."""

    needs_interactions: ClassVar[bool] = True
    OPTIONS = (*RQVAE.OPTIONS, "hops")
    FIT_INPUTS = ("interactions",)

    def __init__(
        self,
        spec: QuantizerSpec,
        dim: int | None = None,
        modality_dims: list[int] | None = None,
        num_items: int = 0,
    ) -> None:
        self.hops = spec.option("hops", 2, int)
        if self.hops < 0:
            raise SemidError(f"option hops={self.hops} in {spec} must be >= 0")
        if modality_dims is not None and dim is not None and sum(modality_dims) != dim:
            raise SemidError(f"modality_dims {modality_dims} do not add up to dim {dim}")
        self.modality_dims = list(modality_dims) if modality_dims else ([dim] if dim else [])
        self.num_items = num_items
        super().__init__(spec, dim)

    def extra_config(self) -> dict[str, Any]:
        """Modality widths and the number of fitted items (sizes of the saved buffers)."""
        return {"modality_dims": self.modality_dims, "num_items": self.num_items}

    def _model_dim(self, dim: int) -> int:
        return 2 * dim  # content, then its graph-propagated copy

    def _build(self, dim: int) -> None:
        super()._build(dim)
        proj = torch.randn(dim, _FINGERPRINT_DIM, generator=torch.Generator().manual_seed(0))
        self.register_buffer("fingerprint_proj", proj)
        self._alloc_items(self.num_items)

    def _alloc_items(self, n: int) -> None:
        self.num_items = n
        # (N_fit, D) propagated features of the fitted items, before centring and scaling
        self.register_buffer("graph_features", torch.zeros(n, self.dim))
        # (N_fit, F) random projections of their content, to recognise them at encode time
        self.register_buffer("fingerprints", torch.zeros(n, _FINGERPRINT_DIM))

    # --- inputs: one tensor, or one per modality ---

    def check_input(self, x: Tensor | list[Tensor], *, empty_ok: bool = False) -> Tensor:
        """Validate x (N, D) or a list of (N, D_m) modalities; returns them concatenated (N, sum D_m)."""
        modalities = isinstance(x, list | tuple) and all(getattr(m, "ndim", 0) == 2 for m in x)
        xs = [as_embeddings(m) for m in (x if modalities else [x])]  # else rows, as numpy takes
        if any(m.ndim != 2 for m in xs):
            raise SemidError(
                f"expected embeddings of shape (N, D) per modality, got {[tuple(m.shape) for m in xs]}"
            )
        if len({m.shape[0] for m in xs}) != 1:
            raise SemidError(
                f"modalities have different item counts {[m.shape[0] for m in xs]}; give one row per item in each"
            )
        widths = [m.shape[1] for m in xs]
        if self.dim is None:
            self.modality_dims = widths
        elif widths != self.modality_dims and not (len(xs) == 1 and widths[0] == self.dim):
            raise SemidError(
                f"embeddings have dimensions {widths} but the quantizer expects {self.modality_dims} (one tensor per modality, in fit order)"
            )
        return super().check_input(torch.cat([m.float() for m in xs], 1), empty_ok=empty_ok)

    def fit(
        self, x: Tensor | list[Tensor], interactions: Interactions | None = None, **kwargs: Any
    ) -> GraphRQVAE:
        """Train on content x (N, D) or a list of modalities, with the TRAINING interactions over the same N items."""
        if interactions is None:
            raise SemidError(
                "graph_rqvae needs the training interactions: fit(x, interactions=leave_one_out(log).train), "
                "or --dataset / --interactions on the command line"
            )
        missing = [name for name in ("users", "items", "num_users", "num_items")
                   if not hasattr(interactions, name)]  # fmt: skip
        if missing:
            raise SemidError(
                f"interactions must be an interaction log (users, items, num_users, num_items), "
                f"e.g. leave_one_out(log).train; got a {type(interactions).__name__} without {missing[0]}"
            )
        return super().fit(x, interactions=interactions, **kwargs)

    def _fit_inputs(self, x: Tensor, interactions: Interactions | None = None) -> Tensor:
        if interactions.num_items != x.shape[0]:
            raise SemidError(
                f"the interactions cover {interactions.num_items} items but {x.shape[0]} embeddings were given; "
                "give one embedding row per item id"
            )
        blocks = x.split(self.modality_dims, 1)
        graph = torch.cat(
            [
                propagate_item_features(
                    b, interactions.users, interactions.items, interactions.num_users, self.hops
                )
                for b in blocks
            ],
            1,
        )
        self._alloc_items(x.shape[0])
        self.graph_features.copy_(graph)
        del graph  # kept as graph_features
        self.fingerprints.copy_(x @ self.fingerprint_proj)
        both = torch.cat([x, self.graph_features], 1)
        self.mean.copy_(both.mean(0))
        # One scale per modality and half, so each block has unit mean squared norm and weighs the same.
        start = 0
        for width in [*self.modality_dims, *self.modality_dims]:
            block = both[:, start : start + width] - self.mean[start : start + width]
            self.scale[start : start + width] = block.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12)
            start += width
        return both.sub_(self.mean).div_(self.scale)  # (both - mean) / scale, in place

    def item_index(self, x: Tensor) -> Tensor:
        """(N,) index of each content row x (N, D) among the fitted items, -1 for an unknown item (on
        the device of x). A row within ``_MATCH_SHARE`` of the fitted fingerprints' spread of a
        fitted item's fingerprint is that item (its content, a little off)."""
        fp = x @ self.fingerprint_proj
        if self.num_items == 0:
            return torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        twin_tol, tol = self._tolerances()
        same_rows = x.shape[0] == self.num_items
        if same_rows and bool(((fp - self.fingerprints).pow(2).sum(-1) <= tol).all()):
            # The fitted items in fit order: positional, so items with equal content stay apart.
            return torch.arange(x.shape[0], device=x.device)
        dist, idx = nearest(fp, self.fingerprints)  # faiss: on the CPU
        idx = torch.where(dist <= tol, idx, torch.full_like(idx, -1))
        return _spread_over_twins(idx, self._twin_groups(twin_tol)).to(x.device)

    def _tolerances(self) -> tuple[float, float]:
        """(twin, match) squared-distance tolerances of fingerprints (see ``_TWIN_SHARE`` and
        ``_MATCH_SHARE``), computed once per fit or load (cached as `_twin_groups` is)."""
        key = (self.fingerprints.data_ptr(), self.fingerprints._version)
        cached = getattr(self, "_tols", None)
        if cached is None or cached[0] != key:
            fp = self.fingerprints
            norm = float(fp.pow(2).sum(-1).mean())
            spread = float((fp - fp.mean(0)).pow(2).sum(-1).mean())
            twin = (
                min(_TWIN_SHARE * norm, max(_MATCH_SHARE * spread, _ROUNDING_SHARE * norm)) + 1e-12
            )
            self._tols = (key, (twin, max(twin, _MATCH_SHARE * spread)))
        return self._tols[1]

    def _twin_groups(self, tol: float) -> Tensor:
        """`twin_groups` of the fitted items, computed once per fit or load (cached against the
        fingerprints' storage and version)."""
        key = (self.fingerprints.data_ptr(), self.fingerprints._version, tol)
        cached = getattr(self, "_twins", None)
        if cached is None or cached[0] != key:
            self._twins = (key, twin_groups(self.fingerprints.cpu(), tol))
        return self._twins[1]

    def _model_inputs(self, x: Tensor) -> Tensor:
        x = x.to(self.mean.device)
        idx = self.item_index(x)
        graph = torch.where((idx >= 0)[:, None], self.graph_features[idx.clamp_min(0)], x)
        both = torch.cat([x, graph], 1)
        del graph
        return both.sub_(self.mean).div_(self.scale)  # (both - mean) / scale, in place

    def _outputs(self, y: Tensor) -> Tensor:
        return (y * self.scale + self.mean)[:, : self.dim]  # the content half


def twin_groups(fingerprints: Tensor, tol: float, window: int = 8) -> Tensor:
    """(N,) group of each fitted item: items whose fingerprints lie within ``tol`` (squared) of
    each other share one, the lowest index among them (rounding in the fit's matrix product may
    leave twins' fingerprints a few ulps apart). Neighbours are looked for among the ``window``
    items next to each in the order of the first fingerprint coordinate (twins are near in it)."""
    n = len(fingerprints)
    order = torch.argsort(fingerprints[:, 0], stable=True)
    ranked = fingerprints[order]
    pairs = []
    for step in range(1, min(window, n - 1) + 1):
        close = (ranked[step:] - ranked[:-step]).pow(2).sum(-1) <= tol
        pairs.append(torch.stack([order[:-step][close], order[step:][close]]))
    edges = torch.cat(pairs, 1) if pairs else torch.zeros(2, 0, dtype=torch.long)
    group = torch.arange(n)
    while True:  # label propagation: every item takes the lowest label among its twins
        low = torch.minimum(group[edges[0]], group[edges[1]])
        new = group.scatter_reduce(0, edges[0], low, "amin").scatter_reduce(
            0, edges[1], low, "amin"
        )
        if torch.equal(new, group):
            return group
        group = new


def _spread_over_twins(idx: Tensor, group: Tensor) -> Tensor:
    """``idx`` (N,) with rows matched to a fitted item that has twins (fitted items of identical
    content, ``group`` (N_fit,) from `twin_groups`, which a lookup by content matches to any one
    of them) spread over those twins in batch order: the first such row gets the first twin, the
    next the second, and so on (cycling), so twins encoded together keep apart in any order or
    subset of the batch."""
    _, group = torch.unique(group, return_inverse=True)  # labels 0..G-1
    sizes = torch.bincount(group)
    rows = (idx >= 0).nonzero().flatten()
    rows = rows[sizes[group[idx[rows]]] > 1]
    if len(rows) == 0:
        return idx
    g = group[idx[rows]]
    order = torch.argsort(g, stable=True)  # by group, batch order kept within one
    rows, g = rows[order], g[order]
    position = torch.arange(len(g))
    starts_here = torch.ones_like(g, dtype=torch.bool)
    starts_here[1:] = g[1:] != g[:-1]
    occurrence = position - torch.cummax(torch.where(starts_here, position, 0), 0).values
    twins = torch.argsort(group, stable=True)  # fitted items by group, lower index first
    first_twin = torch.cumsum(sizes, 0) - sizes
    out = idx.clone()
    out[rows] = twins[first_twin[g] + occurrence % sizes[g]]
    return out


__all__ = ["GraphRQVAE", "Interactions", "twin_groups"]
