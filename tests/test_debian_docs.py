"""debian-docs: parsing apt Translation stanzas, cleaning, pinning by content hash, registry name."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from semid.data.debian_docs import build_documents, load_debian_docs, parse_translation
from semid.data.registry import available_datasets
from semid.errors import SemidError

LONG = "word " * 12
TRANSLATION = f"""Package: alpha
Description-md5: 0
Description-en: Alpha tool for things
 Alpha does things with {LONG}
 .
 Second paragraph here.

Package: alpha-doc
Description-md5: 1
Description-en: Documentation for alpha
 Alpha does things with {LONG}
 .
 Second paragraph here.

Package: beta
Description-en: Too short
 Only five words here.

Package: gamma
Description-en: Same synopsis
 Gamma {LONG}

Package: delta
Description-en: same synopsis
 Delta {LONG}

Package: eps
Description-en: Epsilon library
 Epsilon {LONG}
"""


def test_parse_stanzas_and_paragraphs():
    stanzas = list(parse_translation(TRANSLATION))
    assert [p for p, _, _ in stanzas] == ["alpha", "alpha-doc", "beta", "gamma", "delta", "eps"]
    package, synopsis, text = stanzas[0]
    assert synopsis == "Alpha tool for things"
    assert text == f"Alpha does things with {LONG.strip()}\nSecond paragraph here."


def test_build_dedupes_filters_short_and_ambiguous(tmp_path):
    src = tmp_path / "x_i18n_Translation-en"
    src.write_text(TRANSLATION)
    docs = build_documents([src])
    # alpha-doc repeats alpha's description; beta is short; gamma/delta share a synopsis
    assert [d.id for d in docs] == ["alpha", "eps"]
    assert docs[1].queries == ("Epsilon library",)


@pytest.mark.skipif(shutil.which("lz4") is None, reason="needs the lz4 tool")
def test_load_pins_lz4_corpus_and_detects_changes(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    plain = tmp_path / "t"
    plain.write_text(TRANSLATION)
    subprocess.run(
        ["lz4", "-q", str(plain), str(lists / "a_main_i18n_Translation-en.lz4")], check=True
    )
    cache = tmp_path / "cache"
    coll = load_debian_docs(cache, lists)
    assert coll.ids == ["alpha", "eps"] and coll.metadata["sha256"] == coll.sha256
    # pinned: a changed source does not change the corpus
    (lists / "a_main_i18n_Translation-en.lz4").unlink()
    assert load_debian_docs(cache, lists).sha256 == coll.sha256
    path = cache / "debian-docs.jsonl"
    path.write_text(path.read_text().replace("Epsilon", "Changed"))
    with pytest.raises(SemidError, match="changed since it was pinned"):
        load_debian_docs(cache, lists)


def test_missing_apt_lists_say_how_to_fix(tmp_path):
    with pytest.raises(SemidError, match="apt-get update -o Acquire::Languages=en"):
        load_debian_docs(tmp_path / "cache", tmp_path / "empty")


def test_registered_by_name():
    assert "debian-docs" in available_datasets()
