"""Checks of the documents `semid index add` is given against a retrieval run's own documents:
the ones training held out for a later add (``later.jsonl``) and the ones it indexed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from semid.data.documents import DocumentCollection
from semid.data.text_files import lines_of
from semid.errors import SemidError
from semid.indexing import KEPT_TEXT_CHARS, added_texts, read_texts
from semid.notes import note
from semid.wording import counted


def check_held_out_ids(later: Path, collection: DocumentCollection, source: str) -> None:
    """SemidError when a document of ``collection`` takes the id of one that training held out
    for a later add (``later``, not indexed yet) with another text: the held-out one could then
    never be added (`--skip-indexed` would leave it out for good). The held-out documents
    themselves, or a copy, pass."""
    held = _held_out_texts(later)
    clash = [key for key, text in zip(collection.ids, collection.texts, strict=True)
             if key in held and held[key] != text]  # fmt: skip
    if clash:
        raise SemidError(
            f"{counted(len(clash), 'document')} of {source} "
            f"{'takes' if len(clash) == 1 else 'take'} the id of a document that training held out "
            f"for a later add ({later}), with another text (e.g. {clash[0][:60]!r}); give "
            f"{'it a new id' if len(clash) == 1 else 'them new ids'}, or add {later} first"
        )


def _held_out_texts(later: Path) -> dict[str, str]:
    """The texts of ``later``'s documents by id, read as semid writes the file (one object with
    "id" and "text" a line; `write_documents`) and without the notes a user's corpus gets; {} when
    there is none, or it does not read so (an edited file: its own add says why)."""
    try:
        records = [json.loads(line) for line in lines_of(later.read_text(encoding="utf-8"))
                   if line.strip()]  # fmt: skip
        return {str(record["id"]): record["text"] for record in records}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def note_changed_texts(
    index_path: Path, kept_file: str, keys: Sequence[str], texts: Sequence[str], source: str
) -> None:
    """Note the documents that `semid index add --skip-indexed` leaves out as indexed (``keys``
    and their ``texts`` in ``source``) whose text is not the one indexed, as far as the index
    keeps it (its first `KEPT_TEXT_CHARS` characters; training's in ``kept_file``, adds' beside
    it): they keep the indexed text, which a user re-adding an updated corpus should know."""
    try:
        indexed = {**read_texts(index_path / kept_file, "the documents indexed at training"),
                   **added_texts(index_path)}  # fmt: skip
    except SemidError:  # a damaged texts file: answers show no texts, and the add needs none
        return
    changed = [key for key, text in zip(keys, texts, strict=True)
               if key in indexed and indexed[key][:KEPT_TEXT_CHARS] != text[:KEPT_TEXT_CHARS]]  # fmt: skip
    if changed:
        note(f"{counted(len(changed), 'document')} of {source} left out as indexed "
             f"{'has' if len(changed) == 1 else 'have'} another text than the one indexed (e.g. "
             f"{changed[0][:60]!r}) and {'keeps' if len(changed) == 1 else 'keep'} the indexed one: "
             "an indexed document does not change; add the new text under a new id")  # fmt: skip
