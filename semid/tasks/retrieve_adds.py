"""Checks of the documents `semid index add` is given against a retrieval run's own documents:
the ones training held out for a later add (``later.jsonl``) and the ones it indexed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from semid.data.documents import DocumentCollection, read_documents
from semid.errors import SemidError
from semid.indexing import KEPT_TEXT_CHARS, added_texts, read_texts
from semid.notes import note
from semid.wording import counted


def check_held_out_ids(later: Path, collection: DocumentCollection, source: str) -> None:
    """SemidError when a document of ``collection`` takes the id of one that training held out
    for a later add (``later``, not indexed yet) with another text: the held-out one could then
    never be added (`--skip-indexed` would leave it out for good). The held-out documents
    themselves, or a copy, pass."""
    if not later.is_file():
        return
    try:
        held_out = read_documents(later)
    except SemidError:  # an edited later.jsonl: its own add says why
        return
    held = dict(zip(held_out.ids, held_out.texts, strict=True))
    clash = [key for key, text in zip(collection.ids, collection.texts, strict=True)
             if key in held and held[key] != text]  # fmt: skip
    if clash:
        raise SemidError(
            f"{counted(len(clash), 'document')} of {source} "
            f"{'takes' if len(clash) == 1 else 'take'} the id of a document that training held out "
            f"for a later add ({later}), with another text (e.g. {clash[0][:60]!r}); give "
            f"{'it a new id' if len(clash) == 1 else 'them new ids'}, or add {later} first"
        )


def note_changed_texts(
    index_path: Path, kept_file: str, keys: Sequence[str], texts: Sequence[str], source: str
) -> None:
    """Note the documents that `semid index add --skip-indexed` leaves out as indexed (``keys``
    and their ``texts`` in ``source``) whose text is not the one indexed, as far as the index
    keeps it (its first `KEPT_TEXT_CHARS` characters; training's in ``kept_file``, adds' beside
    it): they keep the indexed text, which a user re-adding an updated corpus should know."""
    indexed = {**read_texts(index_path / kept_file, "the documents indexed at training"),
               **added_texts(index_path)}  # fmt: skip
    changed = [key for key, text in zip(keys, texts, strict=True)
               if key in indexed and indexed[key][:KEPT_TEXT_CHARS] != text[:KEPT_TEXT_CHARS]]  # fmt: skip
    if changed:
        note(f"{counted(len(changed), 'document')} of {source} left out as indexed "
             f"{'has' if len(changed) == 1 else 'have'} another text than the one indexed (e.g. "
             f"{changed[0][:60]!r}) and {'keeps' if len(changed) == 1 else 'keep'} the indexed one: "
             "an indexed document does not change; add the new text under a new id")  # fmt: skip
