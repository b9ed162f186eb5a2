"""BM25 lexical index: scores against a hand computation, growth by add, save/load, log-probs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import save

from semid.lexical import LexicalIndex

DOCS = ["the quick brown fox", "the lazy dog sleeps", "quick quick dog"]


def test_bm25_matches_a_hand_computation():
    index = LexicalIndex.from_texts(DOCS, k1=1.5, b=0.75)
    scores = index.scores(["quick dog", "unknownword"])
    n, lengths = 3, [4, 4, 3]
    avg = sum(lengths) / n

    def term(tf, df, length):
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * length / avg))

    expected = [term(1, 2, 4), term(1, 2, 4), term(2, 2, 3) + term(1, 2, 3)]
    torch.testing.assert_close(scores[0], torch.tensor(expected, dtype=torch.float32))
    assert scores[1].abs().sum() == 0  # no known term
    assert index.search(["quick dog"], 1).tolist() == [[2]]
    log_probs = index.log_probs(["unknownword"])
    torch.testing.assert_close(log_probs.exp(), torch.full((1, 3), 1 / 3))


def test_add_equals_building_from_all_texts_and_save_load_round_trips(tmp_path):
    grown = LexicalIndex.from_texts(DOCS[:2])
    before = grown.scores(["quick dog"])
    grown.add(DOCS[2:] + ["a new word"])
    whole = LexicalIndex.from_texts(DOCS + ["a new word"])
    queries = ["quick dog", "new word", "the"]
    torch.testing.assert_close(grown.scores(queries), whole.scores(queries))
    # idf moved
    assert len(grown) == 4 and not torch.equal(before, grown.scores(["quick dog"])[:, :2])
    grown.save(tmp_path / "lexical.safetensors")
    loaded = LexicalIndex.load(tmp_path / "lexical.safetensors")
    torch.testing.assert_close(loaded.scores(queries), grown.scores(queries))
    assert loaded.vocab == grown.vocab


def test_the_same_documents_save_to_the_same_bytes_in_any_process(tmp_path):
    """Several safetensors metadata entries came out in an order that varied between processes."""
    code = (
        "import sys; from semid.lexical import LexicalIndex\n"
        "LexicalIndex.from_texts(['the quick brown fox', 'the lazy dog sleeps']).save(sys.argv[1])\n"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1


def test_an_index_saved_with_one_metadata_entry_per_field_still_loads(tmp_path):
    index = LexicalIndex.from_texts(DOCS)
    c = index.counts
    arrays = {"data": c.data.astype(np.float32), "indices": c.indices.astype(np.int64),
              "indptr": c.indptr.astype(np.int64)}  # fmt: skip
    meta = {"vocab": json.dumps(index.vocab), "shape": json.dumps(list(c.shape)),
            "k1": str(index.k1), "b": str(index.b)}  # fmt: skip
    (tmp_path / "old.safetensors").write_bytes(save(arrays, metadata=meta))
    loaded = LexicalIndex.load(tmp_path / "old.safetensors")
    assert loaded.vocab == index.vocab
    torch.testing.assert_close(loaded.scores(["quick dog"]), index.scores(["quick dog"]))
