import json
import math
import shutil

import numpy as np
import pytest
import torch

from semid.errors import SemidError
from semid.ids import INDEX_FILES, QUANTIZER_DIR, SemanticIDs, level_perplexity, load_quantizer
from semid.indexing import ADDED_TEXTS, add_items, added_texts
from semid.quantization import Quantizer, build_quantizer


def make_ids(strategy="extra-level"):
    raw = torch.tensor([[0, 1], [0, 1], [2, 0], [1, 1]])
    return SemanticIDs.from_codes(
        ["a", "b", "c", "d"], raw, [3, 2], strategy, quantizer_spec="rqkmeans:2x3"
    )


def test_two_way_lookup():
    ids = make_ids()
    for key in ids.keys:
        assert ids.key_of(ids.code_of(key)) == key
    assert ids.key_of((2, 2, 2)) is None
    with pytest.raises(
        SemidError, match=r"key_of takes an ID of 3 codes \(one per level\), got 2: \[0, 1\]"
    ):
        ids.key_of((0, 1))  # was None, as if no item had it
    with pytest.raises(
        SemidError, match=r"codebook_sizes must list each level's number of codes, .* got '3x2'"
    ):
        SemanticIDs.from_codes(["a"], torch.tensor([[0, 1]]), "3x2")
    rows = ids.rows_of_codes(torch.tensor([[[0, 1, 1], [9, 9, 9]]]))
    assert rows.tolist() == [[1, -1]]
    assert ids.rows_of_keys(["d", "a"]).tolist() == [3, 0]
    with pytest.raises(SemidError, match="unknown item key"):
        ids.code_of("zzz")


def test_save_load_round_trip(tmp_path):
    ids = make_ids()
    ids.save(tmp_path / "idx")
    loaded = SemanticIDs.load(tmp_path / "idx")
    assert loaded.keys == ids.keys
    assert torch.equal(loaded.codes, ids.codes) and torch.equal(loaded.raw_codes, ids.raw_codes)
    assert loaded.codebook_sizes == ids.codebook_sizes and loaded.collision == ids.collision
    assert json.loads((tmp_path / "idx" / "stats.json").read_text())["items"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_failed_save_keeps_the_previous_index(tmp_path, monkeypatch):
    make_ids().save(tmp_path / "idx")
    before = (tmp_path / "idx" / "codes.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("semid.ids.save_file", boom)
    with pytest.raises(RuntimeError):
        make_ids().save(tmp_path / "idx")
    assert (tmp_path / "idx" / "codes.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_stats():
    stats = make_ids().stats()
    assert stats["collision_rate_before"] == pytest.approx(0.25)
    assert stats["collision_rate_after"] == 0
    assert stats["max_items_per_id_before"] == 2
    assert [lv["used"] for lv in stats["per_level"]] == [3, 2, 2]


def test_level_perplexity_bounds():
    assert level_perplexity(torch.arange(8), 8) == pytest.approx(8)
    assert level_perplexity(torch.zeros(8, dtype=torch.long), 8) == pytest.approx(1)
    assert 1 < level_perplexity(torch.tensor([0, 0, 0, 1]), 2) < 2
    assert math.isfinite(level_perplexity(torch.tensor([], dtype=torch.long), 4))


def test_add_new_items_gets_unique_ids():
    ids = make_ids()
    added = ids.add(["e", "f"], torch.tensor([[0, 1], [2, 1]]))
    assert added.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert ids.key_of((0, 1, 2)) == "e" and len(ids) == 6
    assert ids.codebook_sizes[-1] == 3
    assert ids.stats()["items_moved"] == 2  # b at the build, e now (f keeps token 0)
    with pytest.raises(SemidError, match="already indexed"):
        ids.add(["a"], torch.tensor([[0, 0]]))
    # new items sharing a raw code in one add take the next free tokens, after the index's own
    added = ids.add(["g", "h", "i"], torch.tensor([[0, 1], [1, 0], [0, 1]]))
    assert added.tolist() == [[0, 1, 3], [1, 0, 0], [0, 1, 4]]
    assert [ids.key_of(tuple(code)) for code in added.tolist()] == ["g", "h", "i"]
    assert ids.codebook_sizes[-1] == 5
    assert ids.stats()["items_moved"] == 4


def test_items_moved_by_an_add_are_counted_in_the_saved_stats(tmp_path):
    ids = make_ids()
    ids.add(["e"], torch.tensor([[2, 0]]))  # c's raw code: e takes token 1
    ids.save(tmp_path / "idx")
    assert SemanticIDs.load(tmp_path / "idx").stats()["items_moved"] == 2
    assert json.loads((tmp_path / "idx" / "stats.json").read_text())["items_moved"] == 2


def test_add_to_an_index_without_an_extra_level_moves_a_taken_id_to_the_nearest_free_code():
    raw = torch.tensor([[0, 0], [0, 1]])
    ids = SemanticIDs.from_codes(["a", "b"], raw, [2, 3], "reassign", distances=torch.zeros(2, 3))
    distances = torch.tensor([[0.0, 0.5, 0.2], [0.0, 0.1, 0.2]])
    # e lands on a's ID (0, 0): its nearest free code is 2 (1 is b's); f's (1, 0) is free
    added = ids.add(["e", "f"], torch.tensor([[0, 0], [1, 0]]), distances)
    assert added.tolist() == [[0, 2], [1, 0]] and ids.key_of((0, 2)) == "e"
    assert ids.stats()["items_moved"] == 1  # e
    with pytest.raises(
        SemidError, match=r"under the prefix \(0,\) is taken.*--collisions extra-level"
    ):
        ids.add(["g"], torch.tensor([[0, 1]]), torch.zeros(1, 3))
    assert len(ids) == 4 and ids.stats()["items_moved"] == 1  # the refusal left it as it was
    with pytest.raises(SemidError, match="is taken and this index has no extra level"):
        ids.add(["g"], torch.tensor([[0, 1]]))  # no distances: a taken ID is refused
    with pytest.raises(SemidError, match=r"distances have shape \(1, 2\), expected \(1, 3\)"):
        ids.add(["g"], torch.tensor([[1, 1]]), torch.zeros(1, 2))


def test_add_to_a_reassign_index_that_fell_back_to_an_extra_level_leaves_distances_unused():
    raw = torch.tensor([[0, 1]] * 3)  # three items on one ID of a 1x2 prefix: no free code left
    ids = SemanticIDs.from_codes(
        ["a", "b", "c"], raw, [1, 2], "reassign", distances=torch.rand(3, 2)
    )
    assert ids.codebook_sizes == [1, 2, 3]  # an extra level numbers them
    added = ids.add(
        ["d"], torch.tensor([[0, 1]]), torch.rand(1, 2)
    )  # the distances a quantizer gives
    assert added.tolist() == [[0, 1, 3]] and ids.key_of((0, 1, 3)) == "d"


def test_rejects_bad_construction(tmp_path):
    with pytest.raises(SemidError, match="not unique"):
        SemanticIDs(["a", "b"], torch.tensor([[0], [0]]), [2])
    with pytest.raises(SemidError, match=r"keys are not unique \(first: 'a' at rows 0 and 2\)"):
        SemanticIDs(["a", "b", "a"], torch.tensor([[0], [1], [2]]), [3])
    with pytest.raises(SemidError, match=r"1 keys for 2 codes \(shape \(2, 1\)\)"):
        SemanticIDs.from_codes(["a"], torch.tensor([[0], [0]]), [2])  # before the extra level
    with pytest.raises(SemidError, match="out of range"):
        SemanticIDs(["a"], torch.tensor([[5]]), [2])
    with pytest.raises(SemidError, match="not a semantic-ID index"):
        SemanticIDs.load(tmp_path)


@pytest.mark.parametrize(
    "keys, codes, sizes, words",
    [
        ([1, 2], [[0, 0], [0, 1]], [4, 4], "item keys must be strings, got int 1"),
        (
            ["a", "b"],
            [[0.7, 0.2], [0.1, 1.9]],
            [4, 4],
            "must be an integer tensor, got torch.float32",
        ),
        (["a"], [[0, 0]], [4.0, 4.0], "codebook sizes must be integers >= 1, got 4.0"),
        (["a"], [[0, 0]], ["4", "4"], "codebook sizes must be integers >= 1, got '4'"),
        (["a"], [[0, 0]], 4, "codebook sizes must be a list of integers, got int"),
    ],
)
def test_the_constructor_refuses_what_save_or_lookups_could_not_keep(keys, codes, sizes, words):
    """Integer keys saved and could not be loaded; float codes were truncated; float or numpy
    sizes passed and failed in save or stats."""
    with pytest.raises(SemidError, match=words):
        SemanticIDs(keys, torch.tensor(codes), sizes)


def test_the_index_keeps_its_own_keys_and_codes(tmp_path):
    keys, codes, array = ["a", "b"], torch.tensor([[0, 0], [0, 1]]), np.array([[0, 0], [0, 1]])
    ids, from_array = SemanticIDs(keys, codes, np.array([4, 4])), SemanticIDs(keys, array, [4, 4])
    codes[1, 1], array[1, 1] = 0, 0  # before any add, which would make new tensors anyway
    assert ids.codes[1].tolist() == [0, 1] and from_array.codes[1].tolist() == [0, 1]
    ids.add(["c"], torch.tensor([[1, 1]]))
    assert keys == ["a", "b"] and ids.key_of((0, 1)) == "b"
    ids.save(tmp_path / "index")  # numpy sizes are plain ints: JSON takes them
    assert SemanticIDs.load(tmp_path / "index").codebook_sizes == [4, 4]


def test_a_grown_index_keeps_the_files_beside_it_and_a_rebuilt_one_does_not(tmp_path):
    """add_items (keep_other_files) keeps what a task stores beside the IDs (an image encoder,
    features); a new index saved over an old folder holds only its own files."""
    q = build_quantizer("rqkmeans:2x4").fit(torch.randn(40, 6), seed=0)
    ids = SemanticIDs.from_codes([f"k{i}" for i in range(40)], q.encode(torch.randn(40, 6)), [4, 4])
    ids.save(tmp_path / "idx", quantizer=q)
    (tmp_path / "idx" / "image_encoder").mkdir()
    (tmp_path / "idx" / "image_encoder" / "weights.bin").write_bytes(b"cnn")
    (tmp_path / "idx" / "features.safetensors").write_bytes(b"rows")
    add_items(tmp_path / "idx", ["new"], torch.randn(1, 6))
    assert (tmp_path / "idx" / "image_encoder" / "weights.bin").read_bytes() == b"cnn"
    assert (tmp_path / "idx" / "features.safetensors").read_bytes() == b"rows"
    assert len(SemanticIDs.load(tmp_path / "idx")) == 41
    assert load_quantizer(tmp_path / "idx") is not None
    ids.save(tmp_path / "idx", quantizer=q)  # a rebuild: stale task files must not survive
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted(
        [*INDEX_FILES, QUANTIZER_DIR]
    )


def test_a_runs_damaged_quantizer_is_mended_by_copying_back_its_index(tmp_path):
    """Rebuilding a run's index would not fit its model: the fix names the index it was trained
    with; a quantizer saved on its own is saved again."""
    q = build_quantizer("rqkmeans:2x4").fit(torch.randn(40, 6), seed=0)
    SemanticIDs.from_codes([f"k{i}" for i in range(40)], q.encode(torch.randn(40, 6)), [4, 4]).save(
        tmp_path / "run" / "index", quantizer=q
    )
    (tmp_path / "run" / "manifest.json").write_text("{}")
    (tmp_path / "run" / "index" / QUANTIZER_DIR / "config.json").write_text("{")
    with pytest.raises(
        SemidError, match=f"copy back the index run {tmp_path / 'run'} was trained with"
    ):
        load_quantizer(tmp_path / "run" / "index")
    shutil.rmtree(tmp_path / "run" / "index" / QUANTIZER_DIR)
    with pytest.raises(SemidError, match="has no saved quantizer; copy back the index run"):
        load_quantizer(tmp_path / "run" / "index")
    q.save_pretrained(tmp_path / "alone")
    (tmp_path / "alone" / "config.json").write_text("{")
    with pytest.raises(SemidError, match="is damaged .*; save it again with save_pretrained$"):
        Quantizer.from_pretrained(tmp_path / "alone")


def test_items_added_by_text_keep_their_texts_across_later_adds(tmp_path):
    q = build_quantizer("rqkmeans:2x4").fit(torch.randn(40, 6), seed=0)
    ids = SemanticIDs.from_codes([f"k{i}" for i in range(40)], q.encode(torch.randn(40, 6)), [4, 4])
    ids.save(tmp_path / "idx", quantizer=q)
    assert added_texts(tmp_path / "idx") == {}
    add_items(tmp_path / "idx", ["a", "b"], torch.randn(2, 6), texts=["first", "second"])
    add_items(tmp_path / "idx", ["c"], torch.randn(1, 6))  # by vector: no text, the others kept
    add_items(tmp_path / "idx", ["d"], torch.randn(1, 6), texts=["fourth"])
    assert added_texts(tmp_path / "idx") == {"a": "first", "b": "second", "d": "fourth"}
    assert len(SemanticIDs.load(tmp_path / "idx")) == 44
    (tmp_path / "idx" / ADDED_TEXTS).write_text('{"a": 5}')
    with pytest.raises(SemidError, match="JSON object of item texts"):
        added_texts(tmp_path / "idx")
    ids.save(tmp_path / "idx", quantizer=q)  # a rebuild starts with no added texts
    assert added_texts(tmp_path / "idx") == {}


def test_a_damaged_index_names_the_fix_for_where_it_is(tmp_path):
    """A bare index is rebuilt; a run's own index must match its model: restore it or retrain."""
    for folder in (tmp_path / "idx", tmp_path / "run" / "index"):
        make_ids().save(folder)
        (folder / "keys.json").write_text("{")
    with pytest.raises(SemidError, match="keys.json .*; build it again with `semid index build`"):
        SemanticIDs.load(tmp_path / "idx")
    (tmp_path / "run" / "manifest.json").write_text("{}")
    with pytest.raises(
        SemidError, match=r"copy back the index run .*run was trained with, or retrain"
    ):
        SemanticIDs.load(tmp_path / "run" / "index")


def test_sha256_names_the_mapping_from_keys_to_ids():
    codes = torch.tensor([[0, 1], [1, 1], [2, 0]])
    ids = SemanticIDs.from_codes(["a", "b", "c"], codes, [4, 4], "extra-level")
    same = SemanticIDs.from_codes(["a", "b", "c"], codes.clone(), [4, 4], "extra-level")
    assert ids.sha256() == same.sha256()
    moved = SemanticIDs.from_codes(
        ["a", "b", "c"], torch.tensor([[0, 1], [1, 2], [2, 0]]), [4, 4], "extra-level"
    )
    renamed = SemanticIDs.from_codes(["a", "b", "d"], codes, [4, 4], "extra-level")
    wider = SemanticIDs.from_codes(["a", "b", "c"], codes, [4, 8], "extra-level")
    assert len({ids.sha256(), moved.sha256(), renamed.sha256(), wider.sha256()}) == 4


@pytest.mark.parametrize(
    "keys, codes, message",
    [
        (["a", "b"], torch.tensor([[0, 1], [1, 0]]).float() + 0.7, "must be an integer tensor"),
        ([0, 1], torch.tensor([[0, 1], [1, 0]]), "item keys must be strings, got int 0"),
        ([], torch.zeros(0, 2, dtype=torch.long), "no codes given"),
        (["a", "b"], torch.tensor([0, 1]), "must have shape (N, 2)"),
        (["a", "b"], torch.tensor([[0, 1], [5, 0]]), "out of range: row 1 has code 5 at level 0"),
    ],
)
def test_from_codes_refuses_codes_and_keys_it_could_not_save_or_search(keys, codes, message):
    """Float codes would be truncated, integer keys saved but never loaded back, codes out of range
    break the trie later: each is one clear error at once."""
    with pytest.raises(SemidError) as error:
        SemanticIDs.from_codes(keys, codes, [3, 2])
    assert message in str(error.value)


def test_add_checks_new_codes_before_changing_the_index():
    ids = make_ids()
    for codes, message in (
        (torch.tensor([[9, 9]]), "new items' codes out of range"),
        (torch.tensor([[0.5, 1.0]]), "new items' codes must be an integer tensor"),
        (torch.tensor([[0, 1, 0]]), "new items' codes must have shape (N, 2)"),
    ):
        with pytest.raises(SemidError) as error:
            ids.add(["new"], codes)
        assert message in str(error.value)
    with pytest.raises(SemidError, match="item keys must be strings"):
        ids.add([7], torch.tensor([[0, 0]]))
    assert len(ids) == 4 and ids.trie() is not None  # unchanged and still searchable
    assert ids.add(["new"], torch.tensor([[2, 1]])).tolist() == [[2, 1, 0]]


def test_save_refuses_a_folder_that_is_not_an_index(tmp_path):
    ids = make_ids()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SemidError, match=r"not a saved index \(it holds notes.txt\)"):
        ids.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    ids.save(tmp_path / "idx")
    ids.save(tmp_path / "idx")  # an earlier index is replaced
    assert SemanticIDs.load(tmp_path / "idx").keys == ids.keys


def test_one_key_as_a_string_and_codes_of_another_length_are_named():
    """``rows_of_keys("k1")`` looked up "k" and "1"; a short code tuple was looked up as absent."""
    ids = SemanticIDs(["k1", "k2"], torch.tensor([[0, 0], [0, 1]]), [2, 2])
    with pytest.raises(SemidError, match=r"got the string 'k1'; pass \['k1'\]"):
        ids.rows_of_keys("k1")
    with pytest.raises(SemidError, match="got the string 'zz'"):
        ids.add("zz", torch.tensor([[1, 1]]))
    with pytest.raises(SemidError, match=r"codes must have shape \(..., 2\), got \(1, 3\)"):
        ids.rows_of_codes(torch.tensor([[0, 0, 0]]))
    assert ids.rows_of_codes([[0, 1], [1, 1]]).tolist() == [1, -1]
    with pytest.raises(SemidError, match=r"key_of takes one ID \(L,\), got shape \(2, 2\)"):
        ids.key_of(ids.codes)


def test_build_ids_refuses_a_key_count_before_it_fits(monkeypatch):
    from semid.indexing import build_ids

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the keys were checked")

    monkeypatch.setattr("semid.quantizers.rqvae.RQVAE.fit", no_fit)
    x = torch.randn(30, 8)
    with pytest.raises(SemidError, match="10 keys for 30 item vectors"):
        build_ids([f"k{i}" for i in range(10)], x, "rqvae:2x4")
    with pytest.raises(SemidError, match="30 keys for 5 item vectors"):
        build_ids([f"k{i}" for i in range(30)], x, "rqvae:2x4", encode_x=torch.randn(5, 8))


@pytest.mark.parametrize("name", ["keys.json", "codes.safetensors"])
def test_a_changed_byte_in_an_index_file_is_told(tmp_path, name):
    """One flipped byte renamed a key (keys.json) or moved a code (codes.safetensors) and the index
    still loaded: predict answered with a key that does not exist, without a word."""
    ids = SemanticIDs(["apple", "pear"], torch.tensor([[0, 1], [1, 0]]), [2, 2])
    ids.save(tmp_path / "idx")
    path = tmp_path / "idx" / name
    data = bytearray(path.read_bytes())
    at = data.index(b"pear") if name == "keys.json" else len(data) - 3
    data[at] ^= 0x04  # "tear", or a code's byte
    path.write_bytes(bytes(data))
    with pytest.raises(
        SemidError, match=rf"idx/{name} is damaged: its bytes are not those written"
    ):
        SemanticIDs.load(tmp_path / "idx")


def test_ragged_codes_and_late_collision_checks_are_told_before_any_work(monkeypatch):
    """Rows of codes of different lengths raised torch's ValueError; an unknown strategy, missing
    or negative counts for `popularity`, and keys that do not match `auto`'s vectors ("1 item to
    index") were told only after the quantizer's fit, or wrongly."""
    from semid.indexing import build_ids
    from semid.quantization import build_quantizer
    from semid.trie import PrefixTrie

    with pytest.raises(SemidError, match=r"codes must be an \(N, 2\) table of integer codes"):
        PrefixTrie.from_codes([[0, 1], [1]], [2, 2])
    with pytest.raises(SemidError, match=r"codes must be an \(N, 2\) table of integer codes"):
        SemanticIDs.from_codes(["a", "b"], [[0, 1], [1]], [2, 2])
    rows = [torch.tensor([0, 1]), torch.tensor([1, 0])]  # a list of rows as tensors is a table
    assert SemanticIDs.from_codes(["a", "b"], rows, [2, 2]).codes[:, :2].tolist() == [
        [0, 1],
        [1, 0],
    ]
    with pytest.raises(SemidError, match="its rows of one length"):
        SemanticIDs.from_codes(["a", "b"], [torch.tensor([0, 1]), torch.tensor([1])], [2, 2])
    ids = SemanticIDs.from_codes(["a", "b"], [[0, 1], [1, 0]], [2, 2])
    with pytest.raises(SemidError, match=r"new items' codes must be an \(N, 2\) table"):
        ids.add(["c", "d"], [[1, 1], [0]])

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the arguments were checked")

    monkeypatch.setattr(type(build_quantizer("rqkmeans:1x2")), "fit", no_fit)
    keys, x = ["a", "b", "c"], torch.randn(3, 4)
    cases = [
        ({"collisions": "popular"}, "unknown collision strategy 'popular' .did you mean 'popularity'"),
        ({"collisions": "popularity"}, "needs item interaction counts"),
        ({"collisions": "popularity", "popularity": torch.tensor([1, -2, 3])}, r"counts \(finite, >= 0\)"),
        ({"collisions": "popularity", "popularity": torch.tensor([1, 2])}, r"one count per item, 3 in all; got shape \(2,\)"),
        ({"collisions": "popularity", "popularity": torch.ones(3, 1)}, r"got shape \(3, 1\)"),
        ({"collisions": "popularity", "popularity": torch.tensor(3)}, r"got shape \(\)"),
    ]  # fmt: skip
    for kwargs, words in cases:
        with pytest.raises(SemidError, match=words):
            build_ids(keys, x, "rqkmeans:1x2", **kwargs)
    with pytest.raises(SemidError, match="^1 key for 3 item vectors; give one key per item$"):
        build_ids(["a"], x, "auto")
