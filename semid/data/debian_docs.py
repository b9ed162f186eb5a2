"""The ``debian-docs`` dataset: Debian package long descriptions, each queried by its one-line synopsis.

Built once from the apt lists (``apt-get update -o Acquire::Languages=en`` writes
``/var/lib/apt/lists/*_i18n_Translation-en*``, lz4-compressed on Debian; ``apt-get install -y lz4``
gives the decompressor) into a pinned JSONL under ``$SEMID_CACHE/datasets`` (default
``~/.cache/semid/datasets``) with its sha256 recorded beside it. Later loads read that file and
check the hash, so results stay comparable even after the apt lists change.

Cleaning: identical long descriptions (``-dev``/``-doc`` packages often share one) are kept once,
documents of fewer than ``min_words`` words are dropped, and so are documents whose synopsis is
not unique (the query would have several right answers).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from semid.atomic import write_json
from semid.data.documents import Document, DocumentCollection, write_documents
from semid.data.pinned import default_dataset_dir, load_pinned
from semid.data.registry import register_dataset
from semid.errors import SemidError

NAME = "debian-docs"
APT_LISTS = Path("/var/lib/apt/lists")
SOURCE_GLOB = "*_i18n_Translation-en*"
BUILD_VERSION = 1  # bump when the cleaning rules change: a new pinned file is built
SETUP_HINT = "run: apt-get update -o Acquire::Languages=en && apt-get install -y lz4"


def _read_text(path: Path) -> str:
    """A Translation file, decompressed by its suffix (.lz4 through the lz4 command line tool)."""
    if path.suffix == ".lz4":
        if shutil.which("lz4") is None:
            raise SemidError(f"{path} is lz4-compressed and the lz4 tool is missing; {SETUP_HINT}")
        raw = subprocess.run(["lz4", "-dc", str(path)], check=True, capture_output=True).stdout
    elif path.suffix == ".gz":
        raw = gzip.decompress(path.read_bytes())
    elif path.suffix == ".xz":
        raw = lzma.decompress(path.read_bytes())
    else:
        raw = path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def parse_translation(text: str) -> Iterator[tuple[str, str, str]]:
    """(package, synopsis, long description) per stanza of an apt Translation file."""
    for stanza in text.split("\n\n"):
        package, lines, in_description = None, [], False
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                package, in_description = line.split(":", 1)[1].strip(), False
            elif line.startswith("Description-en:"):
                lines, in_description = [line.split(":", 1)[1].strip()], True
            elif in_description and line.startswith(" "):
                lines.append(line[1:])
            else:
                in_description = False
        if package and lines:
            yield package, lines[0], _long_description(lines[1:])


def _long_description(lines: list[str]) -> str:
    """Join description lines: a line of just '.' is a paragraph break (Debian policy 5.6.13)."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip() == ".":
            paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p)


def build_documents(sources: list[Path], min_words: int = 10) -> list[Document]:
    """Clean documents from Translation files: deduplicated, >= min_words words, unique synopses."""
    seen_packages, seen_texts, candidates = set(), set(), []
    for path in sources:
        for package, synopsis, text in parse_translation(_read_text(path)):
            if package in seen_packages or text in seen_texts:
                continue
            seen_packages.add(package)
            seen_texts.add(text)
            if len(text.split()) >= min_words and synopsis:
                candidates.append(Document(package, text, (synopsis,)))
    counts = Counter(d.queries[0].lower() for d in candidates)
    return [d for d in candidates if counts[d.queries[0].lower()] == 1]


def find_sources(lists_dir: str | os.PathLike = APT_LISTS) -> list[Path]:
    """The English Translation files of the apt lists, sorted by name (the build order)."""
    sources = sorted(Path(lists_dir).glob(SOURCE_GLOB))
    if not sources:
        raise SemidError(f"no {SOURCE_GLOB} files in {lists_dir}; {SETUP_HINT}")
    return sources


def build_debian_docs(
    out_dir: str | os.PathLike | None = None, lists_dir: str | os.PathLike = APT_LISTS
) -> Path:
    """Build and pin the corpus: ``debian-docs.jsonl`` plus ``debian-docs.json`` (sha256, sources)."""
    out_dir = Path(out_dir) if out_dir is not None else default_dataset_dir()
    sources = find_sources(lists_dir)
    documents = build_documents(sources)
    path = out_dir / f"{NAME}.jsonl"
    sha = write_documents(path, documents)
    write_json(
        out_dir / f"{NAME}.json",
        {
            "name": NAME,
            "build_version": BUILD_VERSION,
            "sha256": sha,
            "documents": len(documents),
            "sources": [{"file": p.name, "bytes": p.stat().st_size} for p in sources],
        },
    )
    return path


def load_debian_docs(
    out_dir: str | os.PathLike | None = None, lists_dir: str | os.PathLike = APT_LISTS
) -> DocumentCollection:
    """The pinned corpus (built on first use), its content hash checked against the recorded one."""
    return load_pinned(NAME, out_dir, BUILD_VERSION, lambda out: build_debian_docs(out, lists_dir))


register_dataset(
    NAME,
    load_debian_docs,
    "Debian package descriptions (~58k documents, synopsis as query), pinned JSONL built from apt lists",
    kind="documents",
)
