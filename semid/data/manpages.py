"""The ``manpages`` dataset: Unix manual pages, each queried by the one-line summary of its NAME section.

A second real document corpus, of another kind than Debian package descriptions: the document is the
page's DESCRIPTION section (technical prose about options, files and behaviour), the query is the
summary after the dash in NAME (``ls - list directory contents`` gives the query
``list directory contents`` for the document ``ls(1)``). Pages come from ``/usr/share/man/man*``
(English sections 1-8; ``apt-get install -y man-db manpages manpages-dev`` installs the base set,
every other package adds its own). Built once into a pinned JSONL under ``$SEMID_CACHE/datasets``
with its sha256 recorded beside it, like ``debian-docs``; later loads check the hash.

The roff source is read directly (no ``man`` process per page): macro lines keep their text
arguments, escapes become their characters or vanish. Both the ``man`` macros (``.SH NAME``) and
the BSD ``mdoc`` macros (``.Sh NAME``, ``.Nd``) are understood. Cleaning: redirect pages (``.so``)
and symlinks are skipped, and so are the generated ``gcloud_*`` references (one vendor CLI's
16k near-identical pages, present on few machines), a document keeps the first ``max_words`` words of its description,
identical descriptions are kept once, documents of fewer than ``min_words`` words are dropped, and
so are documents whose query is not unique (the query would have several right answers).
"""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from semid.atomic import write_json
from semid.data.documents import Document, DocumentCollection, write_documents
from semid.data.pinned import default_dataset_dir, load_pinned
from semid.data.registry import register_dataset
from semid.errors import SemidError

NAME = "manpages"
MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8")
BUILD_VERSION = 1  # bump when the parsing or cleaning rules change: a new pinned file is built
SETUP_HINT = "run: apt-get install -y man-db manpages manpages-dev"
# generated per-subcommand references of one vendor CLI (16k pages where installed, descriptions that
# repeat the summary): they would swamp the corpus on machines that have them and be absent elsewhere
EXCLUDED_PREFIXES = ("gcloud_",)

# layout and definition requests whose arguments are not text
_SILENT = {
    "TH", "so", "ds", "de", "nr", "ie", "el", "if", "tr", "ft", "ps", "vs", "ne", "ta", "sp", "br",
    "in", "ti", "ll", "na", "ad", "hy", "nh", "nf", "fi", "PD", "RS", "RE", "PP", "LP", "P", "TP",
    "TQ", "UE", "ME", "EE", "EX", "Dd", "Dt", "Os", "Bl", "El", "Bd", "Ed", "Pp", "Lp", "Sm", "ig",
    "Ns", "Ek", "Bk", "rm", "als", "mso", "cc", "ec", "eo", "ce", "bp", "pl", "lf", "IX", "TS", "TE",
}  # fmt: skip
_CHARACTERS = {"aq": "'", "dq": '"', "em": "-", "en": "-", "hy": "-", "lq": '"', "rq": '"',
               "oq": "'", "cq": "'", "bu": "*", "co": "(c)", "rg": "(R)", "mu": "x", "ti": "~",
               "ha": "^", "ga": "`", "ua": "^", "da": "v", "ra": "->", "la": "<-", "pl": "+",
               "mi": "-", "eq": "=", "sl": "/", "rs": "\\"}  # fmt: skip
_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?(\[[^\]]*\]|\(..|\d+)"), ""),  # size changes
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),  # string interpolation
    (re.compile(r"\\[nkgm](\[[^\]]*\]|\(..|.)"), ""),  # registers, marks, colours
    (re.compile(r"\\[hvwoxlLNbDZXYR]'[^']*'"), ""),  # motions and drawings with an argument
    (re.compile(r"\\\[u([0-9A-Fa-f]{4,6})\]"), lambda m: chr(int(m.group(1), 16))),
    (re.compile(r"\\(\(..|\[[^\]]*\])"), lambda m: _CHARACTERS.get(m.group(1).strip("([]"), "")),
    (re.compile(r"\\[-e]"), lambda m: "-" if m.group(0) == "\\-" else "\\"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&|^c%:/,)!{}'`dur]"), ""),
    (re.compile(r'\\".*$'), ""),  # a comment to the end of the line
]


def plain_text(line: str) -> str:
    """A roff text line with its escapes replaced by the characters they stand for (or removed)."""
    for pattern, repl in _ESCAPES:
        line = pattern.sub(repl, line)
    return line.replace("\\", "")


def _macro_text(line: str) -> str:
    """The text a macro line carries: its arguments (unquoted) unless it is a layout request."""
    name, _, args = line[1:].strip().partition(" ")
    if name in _SILENT or name.startswith('\\"') or not name:
        return ""
    if name in ("SH", "Sh", "SS", "Ss"):
        return ""
    return " ".join(part.strip('"') for part in re.findall(r'"[^"]*"|\S+', args))


def sections(source: str) -> dict[str, list[str]]:
    """Plain-text lines of each ``.SH``/``.Sh`` section, keyed by its upper-case title."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith(('.\\"', "'\\\"", '.\\"')):
            continue
        head = re.match(r"^[.'](SH|Sh)\s*(.*)$", line)
        if head:
            current = out.setdefault(plain_text(head.group(2)).strip('" ').upper(), [])
            continue
        if current is None:
            continue
        if line.startswith(".Nd "):  # mdoc: the NAME summary
            current.append("- " + plain_text(line[4:]))
        elif line.startswith((".", "'")):
            current.append(plain_text(_macro_text(line)))
        else:
            current.append(plain_text(line))
    return out


def _summary(name_lines: list[str]) -> str | None:
    """The one-line summary after the dash of a NAME section, or None if it has none."""
    text = " ".join(" ".join(name_lines).split())
    match = re.search(r"\s[-\u2013\u2014]+\s+(.+)$", " " + text)
    return match.group(1).strip() if match else None


def parse_page(source: str, max_words: int = 200) -> tuple[str, str] | None:
    """(summary, description) of one page's roff source, or None without a NAME summary or description."""
    found = sections(source)
    summary = _summary(found.get("NAME", []))
    body = found.get("DESCRIPTION") or found.get("DESCRIPTIONS") or found.get("OVERVIEW")
    if not summary or not body:
        return None
    words = " ".join(body).split()
    return summary, " ".join(words[:max_words])


def find_pages(root: str | os.PathLike = MAN_ROOT) -> list[Path]:
    """Regular page files of the English sections, sorted by path (the build order)."""
    root = Path(root)
    pages = sorted(
        p
        for s in SECTIONS
        for p in (root / f"man{s}").glob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(EXCLUDED_PREFIXES)
    )
    if not pages:
        raise SemidError(f"no manual pages under {root}/man1..man8; {SETUP_HINT}")
    return pages


def _read_page(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _page_id(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    stem, _, section = name.rpartition(".")
    return f"{stem}({section})" if stem else name


def iter_documents(pages: list[Path], max_words: int = 200) -> Iterator[Document]:
    """One document per parseable page (redirects and pages without NAME or DESCRIPTION skipped)."""
    for path in pages:
        try:
            source = _read_page(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue  # an unreadable page is not part of the corpus
        if source.lstrip().startswith(".so "):
            continue
        parsed = parse_page(source, max_words)
        if parsed:
            yield Document(_page_id(path), parsed[1], (parsed[0],))


def build_documents(pages: list[Path], min_words: int = 10, max_words: int = 200) -> list[Document]:
    """The cleaned corpus: unique descriptions of min_words+ words whose query is unique."""
    seen: set[str] = set()
    candidates = []
    for doc in iter_documents(pages, max_words):
        if len(doc.text.split()) < min_words or doc.text in seen:
            continue
        seen.add(doc.text)
        candidates.append(doc)
    counts = Counter(d.queries[0].lower() for d in candidates)
    return [d for d in candidates if counts[d.queries[0].lower()] == 1]


def build_manpages(
    out_dir: str | os.PathLike | None = None, root: str | os.PathLike = MAN_ROOT
) -> Path:
    """Build and pin the corpus: ``manpages.jsonl`` plus ``manpages.json`` (sha256, page count)."""
    out_dir = Path(out_dir) if out_dir is not None else default_dataset_dir()
    pages = find_pages(root)
    documents = build_documents(pages)
    if not documents:
        raise SemidError(
            f"no manual page under {root} has a NAME summary and a DESCRIPTION; {SETUP_HINT}"
        )
    path = out_dir / f"{NAME}.jsonl"
    sha = write_documents(path, documents)
    write_json(out_dir / f"{NAME}.json", {"name": NAME, "build_version": BUILD_VERSION, "sha256": sha,
                                          "documents": len(documents), "pages": len(pages),
                                          "root": str(root)})  # fmt: skip
    return path


def load_manpages(
    out_dir: str | os.PathLike | None = None, root: str | os.PathLike = MAN_ROOT
) -> DocumentCollection:
    """The pinned corpus (built on first use), its content hash checked against the recorded one."""
    return load_pinned(NAME, out_dir, BUILD_VERSION, lambda out: build_manpages(out, root))


register_dataset(
    NAME,
    load_manpages,
    "Unix manual pages (DESCRIPTION as document, NAME summary as query), pinned JSONL built from /usr/share/man",
    kind="documents",
)
