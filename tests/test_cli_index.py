"""`semid index build/stats` end to end, and every bad input: one line on stderr, exit != 0."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from semid.cli.main import main
from semid.data.interaction_files import look_alike_across
from semid.ids import SemanticIDs, load_quantizer
from semid.indexing import added_texts


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semid.cli.main", *args], capture_output=True, text=True
    )


@pytest.fixture
def embeddings(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    np.save(tmp_path / "items.npy", x)
    (tmp_path / "items.txt").write_text("".join(f"item-{i}\n" for i in range(300)))
    return tmp_path / "items.npy", tmp_path / "items.txt"


def build_args(x_path, keys_path, out, quantizer="rqkmeans:2x8", *extra: str) -> list[str]:
    """`semid index build` arguments for an embeddings file."""
    return ["index", "build", "--embeddings", str(x_path), "--keys", str(keys_path), "--quantizer", quantizer, "--out", str(out), *extra]  # fmt: skip


def test_build_from_embeddings_then_stats(tmp_path, embeddings, capsys):
    x_path, keys_path = embeddings
    out = tmp_path / "idx"
    code = main(build_args(x_path, keys_path, out))
    assert code == 0
    ids = SemanticIDs.load(out)
    assert len(ids) == 300 and ids.keys[0] == "item-0"
    assert ids.stats()["collision_rate_after"] == 0
    # The saved quantizer reproduces the raw codes.
    import torch

    q = load_quantizer(out)
    assert torch.equal(q.encode(torch.from_numpy(np.load(x_path))), ids.raw_codes)
    capsys.readouterr()
    assert main(["index", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 300 and stats["codebook_sizes"][:2] == [8, 8]


def test_build_measures_what_the_ids_lose_and_stats_show_it(tmp_path, embeddings, capsys):
    x_path, keys_path = embeddings
    for spec in ("rqkmeans:2x8", "rqkmeans:2x64"):
        assert main(build_args(x_path, keys_path, tmp_path / spec, spec)) == 0
    capsys.readouterr()
    shares = []
    for spec in ("rqkmeans:2x8", "rqkmeans:2x64"):
        assert main(["index", "stats", str(tmp_path / spec)]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "reconstruction" in ln)
        shares.append(float(line.split()[2]))
        q, x = load_quantizer(tmp_path / spec), np.load(x_path)
        assert shares[-1] == pytest.approx(q.reconstruction_error(x), abs=1e-4)
    assert 0 < shares[1] < shares[0] < 1  # more codes keep more of the vectors
    # an index built before the measure existed shows a dash
    config = json.loads((tmp_path / spec / "config.json").read_text())
    config["metadata"]["reconstruction_error"] = 0.0  # a perfect one is shown, not taken for none
    (tmp_path / spec / "config.json").write_text(json.dumps(config))
    assert main(["index", "stats", str(tmp_path / spec)]) == 0
    assert "reconstruction error     0.0000 (" in capsys.readouterr().out
    del config["metadata"]["reconstruction_error"]
    (tmp_path / spec / "config.json").write_text(json.dumps(config))
    assert main(["index", "stats", str(tmp_path / spec)]) == 0
    assert "reconstruction error     -" in capsys.readouterr().out


def test_a_crowded_index_is_noted_with_what_would_spread_it(tmp_path, embeddings, capsys):
    """300 items on 2x8 = 64 quantized IDs: most share theirs, and the build says so."""
    x_path, keys_path = embeddings
    assert main(build_args(x_path, keys_path, tmp_path / "crowded")) == 0
    err = capsys.readouterr().err
    assert "of the items have no quantized ID of their own" in err
    assert "more codes per level" in err and "--items" not in err  # embeddings: texts are no fix
    assert main(build_args(x_path, keys_path, tmp_path / "roomy", "rqkmeans:3x16")) == 0
    assert "no quantized ID of their own" not in capsys.readouterr().err


def test_same_seed_same_ids(tmp_path, embeddings):
    x_path, keys_path = embeddings
    for name in ("a", "b"):
        main(build_args(x_path, keys_path, tmp_path / name, "rqkmeans:2x8", "--seed", "3"))
    assert SemanticIDs.load(tmp_path / "a").codes.equal(SemanticIDs.load(tmp_path / "b").codes)


def _bad_npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", "NaN"),
        ("one_dim", "2-D"),
        ("length_mismatch", "keys"),
        ("empty", "empty"),
        ("unknown_dataset", "neither a registered dataset"),
        ("unwritable", "--out"),
        ("bad_spec", "quantizer spec"),
        ("unknown_family", "unknown quantizer family"),
        ("missing_file", "not found"),
        ("huge_spec", "at most 16 levels"),
        ("repeated_option", "option beam is given twice"),
        ("too_many_codes", "use at most 300, e.g. voken:3x16,hidden=64 (or --quantizer auto)"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, embeddings, case, message, capsys):
    x_path, keys_path = embeddings
    out = str(tmp_path / "out")
    args = build_args(x_path, keys_path, out)
    if case == "nan":
        x = np.load(x_path)
        x[5, 3] = np.nan
        args[3] = str(_bad_npy(tmp_path, "nan.npy", x))
    elif case == "one_dim":
        args[3] = str(_bad_npy(tmp_path, "flat.npy", np.zeros(300, np.float32)))
    elif case == "length_mismatch":
        (tmp_path / "short.txt").write_text("a\nb\n")
        args[5] = str(tmp_path / "short.txt")
    elif case == "empty":
        (tmp_path / "empty.npy").write_bytes(b"")
        args[3] = str(tmp_path / "empty.npy")
    elif case == "unknown_dataset":
        args = ["index", "build", "--dataset", "no-such-data", "--out", out]
    elif case == "unwritable":
        (tmp_path / "afile").write_text("x")
        args[-1] = str(tmp_path / "afile" / "idx")
    elif case == "bad_spec":
        args[7] = "rqkmeans-3x256"
    elif case == "unknown_family":
        args[7] = "nosuch:3x256"
    elif case == "missing_file":
        args[3] = str(tmp_path / "nope.npy")
    elif case == "huge_spec":  # it overflowed building the codebook sizes (a traceback)
        args[7] = "rqkmeans:99999999999999999999999x4"
    elif case == "repeated_option":
        args[7] = "rqkmeans:2x8,beam=2,beam=3"
    elif case == "too_many_codes":  # sized as asked, family and options kept (it said rqkmeans)
        args[7] = "voken:3x512,hidden=64"
    # In-process: a traceback would surface here as an exception and fail the test.
    code = main(args)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message.lower() in err.lower(), err


def test_out_of_memory_in_an_index_build_names_what_index_build_can_lower(
    tmp_path, embeddings, monkeypatch, capsys
):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("semid.indexing.build_quantizer", no_memory)
    assert main(build_args(*embeddings, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "out of memory (MemoryError)" in err and "--quantizer with fewer levels" in err, err
    assert "--max-history" not in err  # train's options, which index build does not take


def test_bad_input_from_the_real_command_line(tmp_path):
    (tmp_path / "flat.npy").write_bytes(b"")
    result = run_cli(
        "index", "build", "--embeddings", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_has_examples(capsys):
    from semid.cli.main import COMMANDS

    for group, name, _, _ in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([group, "--help"] if name is None else [group, name, "--help"])
        assert exit_info.value.code == 0
        assert "example:" in capsys.readouterr().out, f"semid {group} {name} --help has no example"


@pytest.mark.slow
def test_build_on_real_ml100k_items(tmp_path):
    out = tmp_path / "ml100k"
    result = run_cli(
        "index", "build", "--dataset", "ml-100k", "--quantizer", "rqkmeans:3x64", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    ids = SemanticIDs.load(out)
    assert len(ids) == 1682
    stats = ids.stats()
    assert stats["collision_rate_after"] == 0
    # A healthy index on real text embeddings uses most of the first level.
    assert stats["per_level"][0]["used"] >= 48
    assert "perplexity" in result.stdout


def test_stats_plot_writes_a_png(tmp_path, embeddings):
    x_path, keys_path = embeddings
    out = tmp_path / "idx"
    main(build_args(x_path, keys_path, out))
    assert main(["index", "stats", str(out), "--plot", str(tmp_path / "usage.png")]) == 0
    assert (tmp_path / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_interactions(path, rows):
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


@pytest.mark.slow
def test_graph_quantizer_from_embeddings_and_interactions(tmp_path, embeddings):
    x_path, keys_path = embeddings
    rows = [(f"u{u}", f"item-{(u * 7 + j) % 300}", j) for u in range(40) for j in range(12)]
    log = _write_interactions(tmp_path / "log.csv", rows)
    out = tmp_path / "idx"
    extra = ["--interactions", str(log), "--collisions", "reassign"]
    code = main(build_args(x_path, keys_path, out, "graph_rqvae:2x8", *extra))
    assert code == 0
    assert SemanticIDs.load(out).stats()["collision_rate_after"] == 0


def test_index_add_to_a_reassign_index_moves_a_colliding_item_to_a_free_code(tmp_path, embeddings):
    x_path, keys_path = embeddings
    out = tmp_path / "idx"
    assert main(build_args(x_path, keys_path, out, "rqkmeans:3x8", "--collisions", "reassign")) == 0
    before = SemanticIDs.load(out)
    assert not before.collision.extra_level
    near = np.load(x_path)[:4] + 1e-3  # next to indexed items: their raw IDs are taken
    np.save(tmp_path / "new.npy", near)
    (tmp_path / "new.txt").write_text("new-0\nnew-1\nnew-2\nnew-3\n")
    assert main(["index", "add", str(out), "--items", str(tmp_path / "new.npy"),
                 "--keys", str(tmp_path / "new.txt")]) == 0  # fmt: skip
    after = SemanticIDs.load(out)
    assert len(after) == len(before) + 4 and after.stats()["collision_rate_after"] == 0
    for i in range(4):  # each newcomer shares its neighbour's prefix, on a code of its own
        new, old = after.code_of(f"new-{i}"), before.code_of(f"item-{i}")
        assert new[:-1] == old[:-1] and new != old


def test_adding_an_updated_catalogue_with_skip_indexed_adds_its_new_items_only(
    tmp_path, embeddings, capsys
):
    x_path, keys_path = embeddings
    out = tmp_path / "idx"
    assert main(build_args(x_path, keys_path, out)) == 0
    rng = np.random.default_rng(1)  # the catalogue as it is now: every old item and two new ones
    np.save(tmp_path / "all.npy", np.concatenate([np.load(x_path), rng.normal(size=(2, 16))]))
    (tmp_path / "all.txt").write_text(keys_path.read_text() + "new-0\nnew-1\n")
    add = ["index", "add", str(out), "--items", str(tmp_path / "all.npy"), "--keys",
           str(tmp_path / "all.txt")]  # fmt: skip
    capsys.readouterr()
    assert main(add) == 2  # without the flag, indexed keys are refused
    assert (
        "300 of the 302 items of " in (err := capsys.readouterr().err)
        and "are already indexed (e.g. 'item-0'); pass --skip-indexed to add only the 2 new ones"
        in err
    )
    assert main([*add, "--skip-indexed"]) == 0
    said = capsys.readouterr().out
    assert "left out 300 items of" in said and "added 2 items to" in said
    after = SemanticIDs.load(out)
    assert len(after) == 302 and after.keys[-2:] == ["new-0", "new-1"]
    assert main([*add, "--skip-indexed"]) == 0  # once more: nothing is new
    assert "nothing to add: every item of" in capsys.readouterr().out
    again = SemanticIDs.load(out)
    assert again.keys == after.keys and torch.equal(again.codes, after.codes)


def test_popularity_collisions_from_embeddings_and_interactions(tmp_path, capsys):
    # items 0 and 1 have one vector, so one ID: the one the log counts more gets extra code 0
    x = np.repeat(np.eye(4, dtype=np.float32), [2, 1, 1, 1][:4], axis=0)[:4]
    x[1] = x[0]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "keys.txt").write_text("a\nb\nc\nd\n")
    x_path, keys_path = tmp_path / "x.npy", tmp_path / "keys.txt"
    for popular, rows in (("a", 0), ("b", 1)):
        events = [(f"u{u}", popular, t) for u in range(3) for t in range(3)]
        events += [(f"u{u}", other, 9) for u in range(3) for other in "abcd"]
        log = _write_interactions(tmp_path / f"log-{popular}.csv", events)
        out = tmp_path / f"idx-{popular}"
        extra = ["--interactions", str(log), "--collisions", "popularity"]
        assert main(build_args(x_path, keys_path, out, "rqkmeans:1x4", *extra)) == 0, (
            capsys.readouterr().err
        )
        codes = SemanticIDs.load(out).codes
        assert codes[rows, -1] == 0 and codes[1 - rows, -1] == 1
    # counted on the train part only: every user's last two events (valid, test) are b, which
    # would make b the most popular item of all events
    events = [(f"u{u}", item, t) for u in range(3) for t, item in enumerate("acdbb")]
    log = _write_interactions(tmp_path / "log-held-out.csv", events)
    extra = ["--interactions", str(log), "--collisions", "popularity"]
    assert (
        main(build_args(x_path, keys_path, tmp_path / "idx-held-out", "rqkmeans:1x4", *extra)) == 0
    )
    codes = SemanticIDs.load(tmp_path / "idx-held-out").codes
    assert codes[0, -1] == 0 and codes[1, -1] == 1
    # without a log there is nothing to count
    assert (
        main(
            build_args(
                x_path, keys_path, tmp_path / "o", "rqkmeans:1x4", "--collisions", "popularity"
            )
        )
        == 2
    )
    assert "--interactions FILE with --embeddings" in capsys.readouterr().err


def test_interactions_accept_what_dataset_accepts(tmp_path, capsys):
    # a registered dataset by name, read as --dataset reads it, here ml-100k's 1,682 movie ids
    keys = [str(i) for i in range(1, 1683)]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(1682, 8)).astype(np.float32))
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    x_path, keys_path = tmp_path / "x.npy", tmp_path / "keys.txt"
    extra = ["--interactions", "ml-100k", "--collisions", "popularity"]
    assert main(build_args(x_path, keys_path, tmp_path / "idx", "rqkmeans:2x8", *extra)) == 0
    assert SemanticIDs.load(tmp_path / "idx").stats()["collision_rate_after"] == 0
    # a --dataset brings its own log: a second one is refused, not silently preferred
    args = [
        "index",
        "build",
        "--dataset",
        "ml-100k",
        "--interactions",
        "ml-100k",
        "--out",
        str(tmp_path / "d"),
    ]
    assert main(args) == 2
    assert "--interactions goes with --embeddings" in capsys.readouterr().err
    # a folder that holds no dataset is named, with what to give instead
    (tmp_path / "empty").mkdir()
    extra = ["--interactions", str(tmp_path / "empty"), "--collisions", "popularity"]
    assert main(build_args(x_path, keys_path, tmp_path / "o", "rqkmeans:2x8", *extra)) == 2
    err = capsys.readouterr().err
    assert "empty" in err and len(err.strip().splitlines()) == 1


def test_interactions_errors_are_one_line(tmp_path, embeddings, capsys):
    x_path, keys_path = embeddings
    log = _write_interactions(tmp_path / "log.csv", [("u1", "no-such-item", t) for t in range(3)])
    out = tmp_path / "o"
    assert (
        main(build_args(x_path, keys_path, out, "graph_rqvae:2x8", "--interactions", str(log))) == 2
    )
    assert "without an embedding" in capsys.readouterr().err
    assert main(build_args(x_path, keys_path, out, "graph_rqvae:2x8")) == 2
    assert "needs user-item interactions" in capsys.readouterr().err
    assert main(build_args(x_path, keys_path, out, "rqkmeans:2x8", "--interactions", str(log))) == 2
    assert "only used by graph quantizers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("items", "spec"),
    [(2, "rqkmeans:3x2"), (3, "rqkmeans:3x2"), (60, "rqkmeans:3x8"), (1682, "rqkmeans:3x32"),
     (100_000, "rqkmeans:3x256"), (10**7, "rqkmeans:3x256")],
)  # fmt: skip
def test_auto_spec_fits_every_catalogue_size(items, spec):
    from semid.indexing import auto_spec, check_fits
    from semid.quantization import build_quantizer

    assert auto_spec(items) == spec
    check_fits(build_quantizer(spec), items, dim=8)  # never refused by the check it is offered by


@pytest.mark.parametrize("items", [2, 3, 5])
def test_auto_quantizer_indexes_a_tiny_catalogue(tmp_path, items, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(items, 8)).astype(np.float32))
    (tmp_path / "keys.txt").write_text("".join(f"k{i}\n" for i in range(items)))
    assert (
        main(build_args(tmp_path / "x.npy", tmp_path / "keys.txt", tmp_path / "idx", "auto")) == 0
    )
    ids = SemanticIDs.load(tmp_path / "idx")
    assert len(ids) == items and len(set(map(tuple, ids.codes.tolist()))) == items
    # the fit, which may take a while and shows no bar, is told before it starts
    assert f"fitting {ids.quantizer_spec} on {items:,} item vectors" in capsys.readouterr().out


def test_one_item_is_refused_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 8), dtype=np.float32))
    (tmp_path / "keys.txt").write_text("only\n")
    assert (
        main(build_args(tmp_path / "x.npy", tmp_path / "keys.txt", tmp_path / "idx", "auto")) == 2
    )
    assert (
        capsys.readouterr().err == "semid: error: 1 item to index; semantic IDs need at least 2\n"
    )


def test_build_refuses_an_out_folder_that_is_not_an_index(tmp_path, embeddings, capsys):
    """The build replaces --out as a whole: a folder of the user's files or a trained run is refused
    in one line and left as it was; an index (or an empty folder) is replaced."""
    x_path, keys_path = embeddings
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    assert main(build_args(x_path, keys_path, mine)) == 2
    err = capsys.readouterr().err
    assert "not a saved index (it holds notes.txt)" in err and len(err.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "keep me\n"
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "manifest.json").write_text("{}\n")
    assert main(build_args(x_path, keys_path, run)) == 2
    assert "holds a semid run, not an index" in capsys.readouterr().err
    assert (run / "manifest.json").is_file() and (run / "model").is_dir()
    index = tmp_path / "idx"
    assert main(build_args(x_path, keys_path, index)) == 0
    assert main(build_args(x_path, keys_path, index, "rqkmeans:2x8", "--seed", "1")) == 0
    (tmp_path / "empty").mkdir()
    assert main(build_args(x_path, keys_path, tmp_path / "empty")) == 0


def test_items_added_to_a_bare_index_by_text_keep_their_texts(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((64, 384)).astype(np.float32))
    (tmp_path / "keys.txt").write_text("".join(f"i{j}\n" for j in range(64)))
    assert (
        main(
            build_args(tmp_path / "x.npy", tmp_path / "keys.txt", tmp_path / "idx", "rqkmeans:2x4")
        )
        == 0
    )
    (tmp_path / "new.csv").write_text("item,title\nfresh,A Fresh Title\n")
    assert main(["index", "add", str(tmp_path / "idx"), "--items", str(tmp_path / "new.csv")]) == 0
    assert added_texts(tmp_path / "idx") == {"fresh": "title: A Fresh Title"}
    assert SemanticIDs.load(tmp_path / "idx").keys[-1] == "fresh"


def test_a_log_with_unknown_column_names_is_named_by_its_columns_option(tmp_path, capsys):
    """A log whose user column has no accepted name, beside a column a document body may have
    (Article), is neither read as documents nor as a log without --columns: the one-line error
    gives the fix of each reading, and --columns makes it a log."""
    rows = [
        f"c{u},a{(u * 7 + t) % 40},5,2024-01-{t + 1:02d}T10:00:00"
        for u in range(60)
        for t in range(6)
    ]
    (tmp_path / "log.csv").write_text("Client,Article,Rating,Date\n" + "\n".join(rows) + "\n")
    args = [
        "index",
        "build",
        "--dataset",
        str(tmp_path / "log.csv"),
        "--out",
        str(tmp_path / "idx"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither a document id column" in err
    assert "for interactions name the columns with --columns user=NAME,item=NAME" in err
    assert main([*args, "--columns", "user=Client,item=Article"]) == 0
    assert len(SemanticIDs.load(tmp_path / "idx")) == 40


def test_the_crowding_note_names_item_texts_only_for_vectors_from_interactions():
    from semid.indexing import crowding_note

    crowded = {"collision_rate_before": 0.84, "max_items_per_id_before": 3096}
    assert "(--items FILE)" in crowding_note(crowded, from_interactions=True)
    plain = crowding_note(crowded)
    assert "--items" not in plain and "up to 3,096 items share one" in plain
    assert crowding_note({"collision_rate_before": 0.1, "max_items_per_id_before": 2}) is None


def test_an_added_key_that_is_an_indexed_one_written_another_way_gets_a_note(
    tmp_path, embeddings, capsys
):
    """A catalogue re-saved by a spreadsheet writes 7 as 7.0: added as a new item, now with the
    note that training gives for such ids."""
    x_path, keys_path = embeddings
    keys_path.write_text("".join(f"{i}\n" for i in range(300)))
    out = tmp_path / "idx"
    assert main(build_args(x_path, keys_path, out)) == 0
    np.save(tmp_path / "new.npy", np.random.default_rng(1).normal(size=(2, 16)))
    (tmp_path / "new.txt").write_text("fresh\n7.0\n")
    capsys.readouterr()
    assert main(["index", "add", str(out), "--items", str(tmp_path / "new.npy"), "--keys",
                 str(tmp_path / "new.txt")]) == 0  # fmt: skip
    assert "the indexed item '7' and '7.0' of " in (err := capsys.readouterr().err)
    assert "differ only by leading zeros or a '.0', and are two items" in err
    assert look_alike_across(["7"], ["007", "8"]) == ("007", "7")
    assert look_alike_across(["9", "70"], ["7", "007x"]) is None


def test_an_add_whose_vectors_cannot_fit_the_index_is_refused_before_embedding(
    tmp_path, embeddings, monkeypatch, capsys
):
    x_path, keys_path = embeddings  # 16-d vectors
    assert main(build_args(x_path, keys_path, tmp_path / "idx")) == 0
    np.save(tmp_path / "new.npy", np.zeros((1, 7), np.float32))
    (tmp_path / "new.txt").write_text("fresh\n")
    add = ["index", "add", str(tmp_path / "idx"), "--items"]
    new = [str(tmp_path / "new.npy"), "--keys", str(tmp_path / "new.txt")]
    assert main([*add, *new, "--encoder", "some-model"]) == 2
    err = capsys.readouterr().err
    assert "new.npy holds 7-d vectors, but the index was built from 16-d ones" in err
    assert "--encoder embeds item texts; " in err  # given with vectors, it is unused

    def no_embedding(*args, **kwargs):
        raise AssertionError("texts embedded before the check")

    monkeypatch.setattr("semid.encoders.TextEncoder.encode", no_embedding)
    (tmp_path / "new.tsv").write_text("fresh\tA Fresh Title\n")
    assert main([*add, str(tmp_path / "new.tsv")]) == 2
    err = capsys.readouterr().err
    assert "would be 384-d vectors (all-MiniLM-L6-v2), but the index was built from 16-d" in err
    assert "--encoder the text model that made the index's vectors" in err


def test_texts_added_to_a_bare_index_are_embedded_by_the_index_s_own_encoder(
    tmp_path, embeddings, monkeypatch
):
    x_path, keys_path = embeddings
    assert main(build_args(x_path, keys_path, tmp_path / "idx")) == 0
    config = json.loads((tmp_path / "idx" / "config.json").read_text())
    config["metadata"]["encoder"] = "my-encoder"  # as an index built from texts by --encoder
    (tmp_path / "idx" / "config.json").write_text(json.dumps(config))
    used = []

    class Encoder:
        dim = 16

        def __init__(self, model=None, device="cpu"):
            used.append(model)

        def encode(self, texts):
            return torch.zeros(len(texts), 16)

    monkeypatch.setattr("semid.tasks.items.TextEncoder", Encoder)
    (tmp_path / "new.tsv").write_text("fresh\tA Fresh Title\n")
    assert main(["index", "add", str(tmp_path / "idx"), "--items", str(tmp_path / "new.tsv")]) == 0
    assert used == ["my-encoder"]  # it embedded them with the default encoder


def test_a_logs_notes_come_before_the_long_work(tmp_path, capsys):
    """A log's notes (file order taken as time order, say) came after embedding and fitting, late
    in the output, though one may be worth stopping the command for."""
    rows = [f"u{u},i{(u * 7 + k) % 40}" for u in range(30) for k in range(5)]
    (tmp_path / "log.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    assert main(["index", "build", "--dataset", str(tmp_path / "log.csv"), "--quantizer",
                 "rqkmeans:2x4", "--out", str(tmp_path / "idx")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "file order is time order" in out
    assert out.index("file order is time order") < out.index("fitting rqkmeans:2x4")
