"""The WordNet noun hierarchy (``wordnet-nouns``): synsets, lemmas, glosses and hypernym edges.

Reads the plain-text WordNet database (``data.noun`` and ``index.noun``, format in ``man 5 wndb``)
from ``/usr/share/wordnet`` (Debian package ``wordnet-base``) or any folder holding those files.
Synset names follow NLTK: first lemma, lower-cased, ``.n.`` and the synset's 1-based position
among that lemma's senses in ``index.noun`` (so ``dog.n.01`` -> ``canine.n.02``).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from semid.data.registry import register_dataset
from semid.errors import SemidError
from semid.hierarchy import transitive_closure

DEFAULT_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet/dict", "/usr/local/WordNet-3.0/dict")
HYPERNYM, INSTANCE_HYPERNYM = "@", "@i"
INSTALL_HINT = "install it with `apt-get install -y --no-install-recommends wordnet-base` or pass the WordNet dict folder"


@dataclass
class WordNet:
    """A noun hierarchy: N synsets with names, lemmas and glosses, and (child, parent) hypernym edges."""

    names: list[str]  # (N) e.g. "dog.n.01"
    lemmas: list[
        list[str]
    ]  # (N) lemma names, spaces as underscores, case kept ("Canis_familiaris")
    glosses: list[str]  # (N)
    edges: Tensor  # (E, 2) int64 rows (child, parent), hypernyms and instance hypernyms
    instance: Tensor  # (E,) bool: the edge is an instance hypernym (@i)
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"WordNet({len(self)} synsets, {len(self.edges)} hypernym edges)"

    def index(self, name: str) -> int:
        """Row of the synset called `name`, e.g. ``index("dog.n.01")``."""
        if name not in self._row:
            raise SemidError(f"unknown synset {name!r}; names look like 'dog.n.01' (lemma.n.sense)")
        return self._row[name]

    def parents(self, name: str) -> list[str]:
        """Names of the direct hypernyms (including instance hypernyms) of synset `name`."""
        row = self.index(name)
        return [self.names[p] for p in self.edges[self.edges[:, 0] == row, 1].tolist()]

    def roots(self) -> list[str]:
        """Names of the synsets without hypernyms."""
        has_parent = torch.zeros(len(self), dtype=torch.bool)
        has_parent[self.edges[:, 0]] = True
        return [self.names[i] for i in (~has_parent).nonzero().squeeze(-1).tolist()]

    def texts(self) -> list[str]:
        """One text per synset for a text encoder: ``"dog, domestic dog, Canis familiaris: a member of ..."``."""
        return [
            f"{', '.join(w.replace('_', ' ') for w in ws)}: {g}"
            for ws, g in zip(self.lemmas, self.glosses, strict=True)
        ]

    @cached_property
    def _closure(self) -> Tensor:
        return transitive_closure(self.edges, len(self))

    def ancestors(self, name: str) -> list[str]:
        """Names of every transitive hypernym of `name`, sorted."""
        pairs = self._closure
        return sorted(self.names[i] for i in pairs[pairs[:, 0] == self.index(name), 1].tolist())

    def closure(self) -> Tensor:
        """Transitive closure (P, 2) int64: every (descendant, ancestor) pair, sorted."""
        return self._closure.clone()

    def depths(self) -> Tensor:
        """Length (N,) int64 of the shortest hypernym path from each synset up to a root."""
        depth = torch.full((len(self),), -1, dtype=torch.long)
        children: list[list[int]] = [[] for _ in range(len(self))]
        for child, parent in self.edges.tolist():
            children[parent].append(child)
        queue = deque(self.index(r) for r in self.roots())
        for r in queue:
            depth[r] = 0
        while queue:  # breadth-first from the roots gives shortest paths
            node = queue.popleft()
            for c in children[node]:
                if depth[c] < 0:
                    depth[c] = depth[node] + 1
                    queue.append(c)
        return depth

    def subtree(self, root: str) -> WordNet:
        """The synset `root` and all its descendants, with the edges among them (e.g. ``mammal.n.01``)."""
        r = self.index(root)
        pairs = self._closure
        keep = sorted({r, *pairs[pairs[:, 1] == r, 0].tolist()})
        new_row = torch.full((len(self),), -1, dtype=torch.long)
        new_row[keep] = torch.arange(len(keep))
        mapped = new_row[self.edges]
        inside = (mapped >= 0).all(1)
        return WordNet(
            names=[self.names[i] for i in keep],
            lemmas=[self.lemmas[i] for i in keep],
            glosses=[self.glosses[i] for i in keep],
            edges=mapped[inside],
            instance=self.instance[inside],
        )


def find_wordnet_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``data.noun`` and ``index.noun``: `path`, $WNHOME/dict, or a default location."""
    if path is not None:
        candidates = [Path(path), Path(path) / "dict"]
    else:
        candidates = [Path(os.environ["WNHOME"]) / "dict"] if "WNHOME" in os.environ else []
        candidates += [Path(d) for d in DEFAULT_DIRS]
    for folder in candidates:
        if (folder / "data.noun").is_file() and (folder / "index.noun").is_file():
            return folder
    where = path if path is not None else ", ".join(str(c) for c in candidates)
    raise SemidError(f"no WordNet data.noun and index.noun found in {where}; {INSTALL_HINT}")


def _sense_numbers(index_file: Path) -> dict[tuple[str, int], int]:
    """(lower-case lemma, synset offset) -> 1-based sense number, from ``index.noun``."""
    senses: dict[tuple[str, int], int] = {}
    with open(index_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            offsets = fields[6 + p_cnt : 6 + p_cnt + synset_cnt]
            for sense, offset in enumerate(offsets, start=1):
                senses[(lemma, int(offset))] = sense
    return senses


def _parse_data_line(line: str) -> tuple[int, list[str], list[tuple[str, int]], str]:
    """(offset, lemmas, [(pointer symbol, target offset) to nouns], gloss) of one ``data.noun`` line."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, w_cnt = int(fields[0]), int(fields[3], 16)  # w_cnt is two hex digits
    lemmas = fields[4 : 4 + 2 * w_cnt : 2]
    pos = 4 + 2 * w_cnt
    p_cnt = int(fields[pos])
    pointers = []
    for i in range(p_cnt):
        symbol, target, target_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
        if target_pos == "n":
            pointers.append((symbol, int(target)))
    return offset, lemmas, pointers, gloss.strip()


def load_wordnet(path: str | os.PathLike | None = None, root: str | None = None) -> WordNet:
    """Read the noun hierarchy from a WordNet dict folder (default: the installed ``wordnet-base``).

    `root` keeps only that synset's subtree, e.g. ``load_wordnet(root="mammal.n.01")``."""
    folder = find_wordnet_dir(path)
    senses = _sense_numbers(folder / "index.noun")
    offsets, lemmas, glosses, pointers = [], [], [], []
    with open(folder / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  ") or not line.strip():
                continue
            offset, ws, ptrs, gloss = _parse_data_line(line)
            offsets.append(offset)
            lemmas.append(ws)
            glosses.append(gloss)
            pointers.append(ptrs)
    row_of = {o: i for i, o in enumerate(offsets)}
    names = []
    for offset, ws in zip(offsets, lemmas, strict=True):
        first = ws[0].lower()
        if (first, offset) not in senses:
            raise SemidError(
                f"synset {offset:08d} ({first}) is missing from index.noun; the WordNet files do not match"
            )
        names.append(f"{first}.n.{senses[(first, offset)]:02d}")
    edges, instance = [], []
    for child, ptrs in enumerate(pointers):
        for symbol, target in ptrs:
            if symbol in (HYPERNYM, INSTANCE_HYPERNYM):
                edges.append((child, row_of[target]))
                instance.append(symbol == INSTANCE_HYPERNYM)
    wn = WordNet(
        names=names,
        lemmas=lemmas,
        glosses=glosses,
        edges=torch.tensor(edges, dtype=torch.long).view(-1, 2),
        instance=torch.tensor(instance, dtype=torch.bool),
    )
    return wn.subtree(root) if root is not None else wn


register_dataset(
    "wordnet-nouns",
    load_wordnet,
    "WordNet 3.0 noun hierarchy: 82,115 synsets, 84,427 hypernym edges (from the wordnet-base apt package)",
    kind="hierarchy",
)
register_dataset(
    "wordnet-mammals",
    lambda: load_wordnet(root="mammal.n.01"),
    "WordNet 3.0 mammal.n.01 subtree: 1,182 synsets, 1,182 edges (from the wordnet-base apt package)",
    kind="hierarchy",
)
