"""A prefix trie over semantic IDs, stored as tensors so a decoding step is one gather.

States of level ``l`` are the distinct ID prefixes of length ``l`` in lexicographic order (level 0
has the single root state; the states after the last level are the IDs themselves, in sorted
order). Because prefixes are sorted, the children of a state form a contiguous run of the next
level's states, so one CSR table per level is enough: ``row_ptr[l]`` (S_l + 1,) delimits each
state's children and ``edge_codes[l]`` (S_{l+1},) holds the code that leads to each child. The
child's state id *is* its edge index, so no next-state array is stored. The first levels also get
a dense (S_l, V_l) next-state table while it fits a byte budget, which makes their masks a plain
row gather. Idea after "Vectorizing the Trie" (Su et al., 2026, youtube/static-constraint-decoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from semid.errors import SemidError

# Budget for the dense tables of the first levels, in total; 3x256 keeps levels 0 and 1 dense.
DEFAULT_DENSE_BYTES = 1 << 20


def _int_dtype(max_value: int) -> torch.dtype:
    """Smallest signed integer dtype that holds values in [-1, max_value]."""
    if max_value <= torch.iinfo(torch.int16).max:
        return torch.int16
    if max_value <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


def _code_dtype(codebook_size: int) -> torch.dtype:
    return torch.uint8 if codebook_size <= 256 else _int_dtype(codebook_size - 1)


def _lex_order(codes: Tensor, sizes: list[int]) -> Tensor:
    """Permutation (N,) that sorts the rows of ``codes`` (N, L) lexicographically."""
    radix = 1
    for v in sizes:
        radix *= v
    if radix < 2**62:  # one sort on a mixed-radix key when it fits in int64
        key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        for level, v in enumerate(sizes):
            key = key * v + codes[:, level]
        return torch.sort(key).indices
    order = torch.arange(codes.shape[0], device=codes.device)
    for level in reversed(range(len(sizes))):  # LSD radix sort: stable sorts from the last level up
        order = order[torch.sort(codes[order, level], stable=True).indices]
    return order


def holds_integers(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds integers (not floats, complex numbers or booleans): codes, leaf
    states and row indices must, as reading a float as one would truncate it."""
    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def check_codes(codes: Tensor, sizes: Sequence[int], what: str = "codes") -> Tensor:
    """Validate an (N, L) integer tensor of codes in range of their codebook ``sizes``; return it
    as int64. Float codes are refused, not truncated."""
    if not isinstance(codes, Tensor):
        try:
            rows = isinstance(codes, list | tuple) and codes and isinstance(codes[0], Tensor)
            codes = torch.stack(list(codes)) if rows else torch.as_tensor(codes)
        except (ValueError, TypeError, RuntimeError) as e:  # ragged rows, or not numbers at all
            raise SemidError(f"{what} must be an (N, {len(sizes)}) table of integer codes, its "
                             f"rows of one length; this {type(codes).__name__} is not one ({e})"
                             ) from None  # fmt: skip
    if not holds_integers(codes):
        raise SemidError(f"{what} must be an integer tensor, got {codes.dtype}; cast with .long()")
    if codes.ndim != 2 or codes.shape[1] != len(sizes):
        raise SemidError(
            f"{what} must have shape (N, {len(sizes)}) for codebook sizes {list(sizes)}, got {tuple(codes.shape)}"
        )
    codes = codes.long()
    if codes.shape[0]:
        bad = (codes < 0) | (codes >= torch.tensor(list(sizes), device=codes.device))
        if bad.any():
            row, level = (int(i) for i in bad.nonzero()[0])
            raise SemidError(
                f"{what} out of range: row {row} has code {int(codes[row, level])} at level {level}, "
                f"but that level has codes 0..{sizes[level] - 1}; fix the codes or the codebook sizes"
            )
    return codes


class PrefixTrie:
    """The set of valid semantic IDs (N, L) as per-level CSR tables (+ dense tables for the first levels)."""

    def __init__(
        self,
        codebook_sizes: Sequence[int],
        row_ptr: list[Tensor],
        edge_codes: list[Tensor],
        dense: list[Tensor | None],
        dense_bytes: int = DEFAULT_DENSE_BYTES,
    ) -> None:
        """Wrap prebuilt tables; use :meth:`from_codes` to build a trie."""
        self.dense_bytes = dense_bytes  # kept so that insert_ rebuilds under the same budget
        self.codebook_sizes: list[int] = [int(v) for v in codebook_sizes]
        self.levels: int = len(self.codebook_sizes)
        # per level (S_l + 1,): the children of state s are states row_ptr[s]:row_ptr[s+1]
        self.row_ptr = row_ptr
        # per level (S_{l+1},): the code that leads to each child state
        self.edge_codes = edge_codes
        self.dense = dense  # per level (S_l, V_l) next state or -1, or None beyond the byte budget
        # the same as allowed codes (bool): a mask gathers a quarter of the bytes and compares none
        self.dense_allowed = [None if t is None else t >= 0 for t in dense]
        self.num_ids: int = int(edge_codes[-1].numel())
        counts = [rp[1:].long() - rp[:-1].long() for rp in row_ptr]
        self.max_branching: list[int] = [int(c.max()) if c.numel() else 0 for c in counts]
        self._windows = [torch.arange(b, device=row_ptr[0].device) for b in self.max_branching]
        self._leaf_bounds: list[Tensor] | None = None  # built on first use by leaf_range
        self._leaf_owners: list[Tensor] | None = None  # built on first use by prefix_state

    @classmethod
    def from_codes(
        cls, codes: Tensor, codebook_sizes: Sequence[int], dense_bytes: int = DEFAULT_DENSE_BYTES
    ) -> PrefixTrie:
        """Build from unique codes (N, L) in one vectorized pass; ``dense_bytes`` caps the dense tables."""
        sizes = [int(v) for v in codebook_sizes]
        if not sizes or min(sizes) < 1:
            raise SemidError(
                f"bad codebook_sizes {list(codebook_sizes)}; pass one positive size per level"
            )
        codes = check_codes(codes, sizes)
        codes = codes[_lex_order(codes, sizes)]
        n, levels = codes.shape
        device = codes.device
        # starts[i, l]: row i begins a new prefix of length l + 1 (differs from row i-1 somewhere in 0..l)
        differs = (codes[1:] != codes[:-1]).to(torch.int8).cummax(dim=1).values.bool()
        if n > 1 and not differs[:, -1].all():
            dup = int((~differs[:, -1]).nonzero()[0]) + 1
            count = int((~differs[:, -1]).sum())
            raise SemidError(
                f"{count} duplicate IDs, e.g. {codes[dup].tolist()}; resolve collisions before building the trie"
            )
        starts = torch.cat(
            [torch.ones(min(n, 1), levels, dtype=torch.bool, device=device), differs]
        )
        row_ptr, edge_codes, dense = [], [], []
        parent_state = torch.zeros(n, dtype=torch.int64, device=device)  # the root
        num_states, budget = 1, dense_bytes
        for level, v in enumerate(sizes):
            new = starts[:, level]
            parents = parent_state[new]  # (S_{l+1},) nondecreasing
            child_codes = codes[new, level]
            num_children = int(parents.numel())
            counts = torch.bincount(parents, minlength=num_states)
            ptr = torch.zeros(num_states + 1, dtype=torch.int64, device=device)
            ptr[1:] = counts.cumsum(0)
            row_ptr.append(ptr.to(_int_dtype(num_children)))
            edge_codes.append(child_codes.to(_code_dtype(v)))
            table = None
            state_dtype = _int_dtype(max(num_children - 1, 0))
            table_bytes = num_states * v * torch.empty((), dtype=state_dtype).element_size()
            if table_bytes <= budget and (level == 0 or dense[-1] is not None):
                budget -= table_bytes
                table = torch.full((num_states, v), -1, dtype=state_dtype, device=device)
                table[parents, child_codes] = torch.arange(num_children, device=device).to(
                    state_dtype
                )
            dense.append(table)
            parent_state = torch.cumsum(new, 0) - 1
            num_states = num_children
        return cls(sizes, row_ptr, edge_codes, dense, dense_bytes)

    # ------------------------------------------------------------------ queries
    @property
    def device(self) -> torch.device:
        """Device of the trie's tables."""
        return self.row_ptr[0].device

    @property
    def nbytes(self) -> int:
        """Total bytes of the trie's tensors."""
        dense = [t for t in [*self.dense, *self.dense_allowed] if t is not None]
        tensors = [*self.row_ptr, *self.edge_codes, *dense]
        return sum(t.numel() * t.element_size() for t in tensors)

    def num_states(self, level: int) -> int:
        """Number of states at ``level`` (distinct prefixes of length ``level``)."""
        return int(self.row_ptr[level].numel()) - 1

    def __len__(self) -> int:
        return self.num_ids

    def __repr__(self) -> str:
        dense = sum(t is not None for t in self.dense)
        return (
            f"PrefixTrie(num_ids={self.num_ids}, codebook_sizes={self.codebook_sizes}, "
            f"dense_levels={dense}, nbytes={self.nbytes})"
        )

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.levels:
            raise SemidError(
                f"level {level} out of range; this trie has levels 0..{self.levels - 1}"
            )

    def _window(self, states: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """Children of each state: (start (R,), codes (R, W) int64 padded with V, ok (R, W) bool)."""
        states = states.long()
        num = self.num_states(level)
        valid = (states >= 0) & (states < num)
        s = states.clamp(0, max(num - 1, 0))
        ptr = self.row_ptr[level]
        start, end = ptr[s].long(), ptr[s + 1].long()
        # (R, W): a fixed-width window, W = the level's max branching, so no loop over states
        win = start[:, None] + self._windows[level]
        ok = (win < end[:, None]) & valid[:, None]
        edges = self.edge_codes[level]
        codes = edges[win.clamp(max=max(edges.numel() - 1, 0))].long() if edges.numel() else win
        codes = torch.where(ok, codes, self.codebook_sizes[level])
        return start, codes, ok

    def allowed_mask(self, states: Tensor, level: int) -> Tensor:
        """Allowed codes at ``level`` for states (R,) int64 -> bool (R, V_level); state -1 allows nothing."""
        self._check_level(level)
        if self.num_states(level) == 0:  # empty trie
            return torch.zeros(
                states.shape[0], self.codebook_sizes[level], dtype=torch.bool, device=states.device
            )
        table = self.dense_allowed[level]
        if table is not None:
            states = states.long()
            valid = (states >= 0) & (states < table.shape[0])
            return table[states.clamp(0, table.shape[0] - 1)] & valid[:, None]
        _, codes, _ = self._window(states, level)
        v = self.codebook_sizes[level]
        mask = torch.zeros(states.shape[0], v + 1, dtype=torch.bool, device=states.device)
        mask.scatter_(1, codes, True)  # padding lands in the spare column v
        return mask[:, :v]

    def advance(self, states: Tensor, level: int, codes: Tensor) -> Tensor:
        """Next states (R,) int64 after taking ``codes`` (R,) at ``level``; -1 where the code is not allowed."""
        self._check_level(level)
        codes = codes.long()
        v = self.codebook_sizes[level]
        in_range = (codes >= 0) & (codes < v)
        if self.num_states(level) == 0 or self.max_branching[level] == 0:  # empty trie
            return torch.full_like(codes, -1)
        table = self.dense[level]
        if table is not None:
            states = states.long()
            valid = (states >= 0) & (states < table.shape[0]) & in_range
            nxt = table[states.clamp(0, table.shape[0] - 1), codes.clamp(0, v - 1)].long()
            return torch.where(valid, nxt, -1)
        start, window_codes, ok = self._window(states, level)
        hit = ok & (window_codes == codes[:, None])
        pos = hit.to(torch.uint8).argmax(dim=1)
        return torch.where(hit.any(dim=1) & in_range, start + pos, -1)

    def contains(self, codes: Tensor) -> Tensor:
        """Whether each ID (N, L) is in the trie -> bool (N,); out-of-range codes are simply absent."""
        return self.leaf_states(codes) >= 0

    def leaf_states(self, codes: Tensor) -> Tensor:
        """The state each ID (N, L) reaches after its last code -> int64 (N,), -1 if the ID is absent.

        A leaf state is the ID's rank in lexicographic order, the same number beam search reaches
        after the last level, so it names a complete ID (see ``constrained_beam_search(exclude=)``)."""
        if not isinstance(codes, Tensor):
            codes = torch.as_tensor(codes)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise SemidError(f"codes must have shape (N, {self.levels}), got {tuple(codes.shape)}")
        if not holds_integers(codes):
            raise SemidError(
                f"codes must be an integer tensor, got {codes.dtype}; cast with .long()"
            )
        states = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        for level in range(self.levels):
            states = self.advance(states, level, codes[:, level])
        return states

    def all_codes(self) -> Tensor:
        """Every ID in the trie (N, L) int64, sorted lexicographically."""
        out = torch.empty(self.num_ids, self.levels, dtype=torch.int64, device=self.device)
        idx = torch.arange(self.num_ids, device=self.device)  # state ids after the last level
        for level in reversed(range(self.levels)):
            out[:, level] = self.edge_codes[level][idx].long()
            ptr = self.row_ptr[level].long()
            parent_of_child = torch.repeat_interleave(
                torch.arange(ptr.numel() - 1, device=self.device), ptr[1:] - ptr[:-1]
            )
            idx = parent_of_child[idx]
        return out

    def _bounds(self, level: int) -> Tensor:
        """First leaf of every state reached by taking a code at ``level``, then num_ids (S + 1,)."""
        if self._leaf_bounds is None:
            bounds = [torch.arange(self.num_ids + 1, device=self.device)]
            for lvl in range(self.levels - 2, -1, -1):  # a state's first leaf is its first child's
                bounds.insert(0, bounds[0][self.row_ptr[lvl + 1].long()])
            self._leaf_bounds = bounds
        return self._leaf_bounds[level]

    def _owners(self, level: int) -> Tensor:
        """The state at ``level`` above each leaf (num_ids,): a table, so lookups are one gather."""
        if self._leaf_owners is None:
            self._leaf_owners = []
            for lvl in range(self.levels):
                bound = self._bounds(lvl)
                sizes = bound[1:] - bound[:-1]
                states = torch.arange(sizes.numel(), device=self.device)
                self._leaf_owners.append(torch.repeat_interleave(states, sizes))
        return self._leaf_owners[level]

    def leaf_range(self, states: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Leaf states [lo, hi) under each state (R,) reached by taking a code at ``level``.

        Leaves are numbered in lexicographic order, so every prefix covers one contiguous range;
        invalid states (-1) get the empty range [0, 0)."""
        self._check_level(level)
        bound = self._bounds(level)
        states = states.long()
        valid = states >= 0
        s = states.clamp(min=0, max=max(bound.numel() - 2, 0))
        lo = torch.where(valid, bound[s], 0)
        hi = torch.where(valid, bound[s + 1], 0)
        return lo, hi

    def prefix_state(self, leaves: Tensor, level: int) -> Tensor:
        """The state each leaf's path reaches by taking its code at ``level`` -> int64 (same shape);
        -1 for invalid leaves (< 0 or >= num_ids). The inverse of :meth:`leaf_range`."""
        self._check_level(level)
        leaves = leaves.long()
        valid = (leaves >= 0) & (leaves < self.num_ids)
        if self.num_ids == 0:
            return torch.full_like(leaves, -1)
        state = self._owners(level)[leaves.clamp(0, self.num_ids - 1)]
        return torch.where(valid, state, -1)

    # ------------------------------------------------------------------ updates
    def insert_(self, codes: Tensor) -> PrefixTrie:
        """Add new unique IDs (N, L) in place and return self; state ids from before are invalidated."""
        codes = check_codes(codes, self.codebook_sizes).to(self.device)
        present = self.contains(codes)
        if present.any():
            raise SemidError(
                f"{int(present.sum())} of the new IDs are already in the trie, e.g. "
                f"{codes[present][0].tolist()}; insert only new IDs"
            )
        # Rebuilding from the sorted union is a vectorized O(N log N) pass (well under 1 s for 1e6 IDs)
        # and keeps the tables compact, unlike patching CSR rows in place.
        rebuilt = PrefixTrie.from_codes(
            torch.cat([self.all_codes(), codes]), self.codebook_sizes, dense_bytes=self.dense_bytes
        )
        self.__dict__.update(rebuilt.__dict__)
        return self

    def to(self, device: torch.device | str) -> PrefixTrie:
        """A copy of the trie with its tables on ``device``."""
        return PrefixTrie(
            self.codebook_sizes,
            [t.to(device) for t in self.row_ptr],
            [t.to(device) for t in self.edge_codes],
            [None if t is None else t.to(device) for t in self.dense],
            self.dense_bytes,
        )
