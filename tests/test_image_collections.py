"""Text to image on a user's own files, end to end through the CLI: a captions-only table, images
added later from an unseen class, without labels, or in the other colour mode."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semid.cli.main import main
from semid.errors import SemidError
from semid.runs import load_run
from semid.tasks import text2image as text2image_module

pytestmark = pytest.mark.usefixtures("one_thread", "fast_image_fits")
SPEC = "voken:2x4,hidden=16,latent=4"


def write_image(path: Path, value: int, colour: bool = False, seed: int = 0) -> None:
    """A noisy 12x12 PNG around `value`, greyscale unless `colour`."""
    rng = np.random.default_rng(seed)
    shape = (12, 12, 3) if colour else (12, 12)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(value + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def write_classes(
    root: Path, classes: dict[str, int], per_class: int, colour: bool = False
) -> None:
    """One subfolder of `per_class` images per class, each class around its own grey value."""
    for name, value in classes.items():
        for i in range(per_class):
            write_image(root / name / f"{name}{i}.png", value, colour, seed=i)


def build_and_train(dataset: Path, out: Path) -> Path:
    """`semid index build` then `semid train retriever` (1 epoch); the run folder."""
    assert main(["index", "build", "--dataset", str(dataset), "--quantizer", SPEC,
                 "--out", str(out / "index")]) == 0  # fmt: skip
    assert main(["train", "retriever", "--dataset", str(dataset), "--model", "avg", "--index",
                 str(out / "index"), "--epochs", "1", "--out", str(out / "run")]) == 0  # fmt: skip
    return out / "run"


def evaluate(run: Path, *ks: str) -> dict:
    """`semid eval RUN --k ...` and its saved metrics."""
    assert main(["eval", str(run), "--k", *ks]) == 0
    return json.loads((run / "metrics.json").read_text())["test"]


def spy_image_labels(monkeypatch, run: Path) -> dict:
    """A dict that the next `semid eval` of ``run`` fills with each indexed image's class (-1:
    relevant to no query), by key."""
    labelled = {}
    answerable = text2image_module.answerable_queries

    def spied(texts, query_labels, image_labels):
        labelled.update(zip(load_run(run).ids.keys, image_labels.tolist(), strict=True))
        return answerable(texts, query_labels, image_labels)

    monkeypatch.setattr(text2image_module, "answerable_queries", spied)
    return labelled


def test_a_captions_only_table_trains_evaluates_and_predicts(tmp_path, capsys):
    rows = ["path,caption"]
    for i in range(20):
        kind = ("dark", "bright")[i % 2]
        write_image(tmp_path / "imgs" / f"{i}.png", 40 if kind == "dark" else 220, seed=i)
        rows.append(f"imgs/{i}.png,a {kind} square number {i}")
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    run = build_and_train(tmp_path / "caps.csv", tmp_path)
    out = capsys.readouterr().out
    assert "images at 12x12 px" in out and "--k 4" in out  # 4 images indexed: no k over 4
    assert "classes" not in out and "captions" in out  # no classes to count
    metrics = evaluate(run, "1", "4")
    assert metrics["invalid_id_rate"] == 0 and metrics["recall@4"] == 1.0  # each caption's image
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "a bright square", "--k", "4"]) == 0
    table = capsys.readouterr().out
    assert "text" in table.splitlines()[1]  # the header: each answer shows its image's caption
    assert len(re.findall(r"a (dark|bright) square number \d+", table)) == 4


def test_every_caption_of_an_image_trains_and_is_a_test_query(tmp_path, capsys):
    rows = ["image,caption"]
    for i in range(20):
        kind = ("dark", "bright")[i % 2]
        write_image(tmp_path / "imgs" / f"{i}.png", 40 if kind == "dark" else 220, seed=i)
        rows += [
            f"imgs/{i}.png,a {kind} square number {i}",
            f"imgs/{i}.png,square {i} which is {kind}",
        ]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    run = build_and_train(tmp_path / "caps.csv", tmp_path)
    assert re.search(r"^captions +32$", capsys.readouterr().out, re.M)  # 16 training images, 2 each
    metrics = evaluate(run, "1", "4")
    assert metrics["num_queries"] == 8 and metrics["recall@4"] == 1.0  # 4 test images, 2 each


def test_a_captions_table_with_a_split_column_keeps_its_split(tmp_path, capsys):
    """Karpathy's COCO and Flickr30k splits come as a split column (train, val, restval, test);
    it was read as nothing, and semid drew its own split over the test images."""
    from semid.data.image_files import load_image_collection

    split_of = {0: "test", 1: "test", 2: "val", 3: "restval"}  # the rest: train
    rows = ["file_name,caption,split"]
    for i in range(12):
        kind = ("dark", "bright")[i % 2]
        write_image(tmp_path / "imgs" / f"{i}.png", 40 if kind == "dark" else 220, seed=i)
        split = split_of.get(i, "train")
        rows += [f"imgs/{i}.png,a {kind} square {i},{split}", f"imgs/{i}.png,square {i},{split}"]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    splits = load_image_collection(tmp_path / "caps.csv", seed=5)
    assert splits.test.keys == ["imgs/0.png", "imgs/1.png"]
    assert splits.train.keys == [f"imgs/{i}.png" for i in range(2, 12)]
    run = build_and_train(tmp_path / "caps.csv", tmp_path)
    metrics = evaluate(run, "1", "2")
    assert (
        metrics["num_queries"] == 4 and metrics["recall@2"] == 1.0
    )  # 2 test images, 2 captions each
    # bad splits are named at their row, with the fix
    cases = {
        "imgs/0.png,a,dev\nimgs/1.png,b,test\n": r"line 2: split 'dev' is neither a training split",
        "imgs/0.png,a,test\nimgs/0.png,b,train\nimgs/1.png,c,train\n": r"in split 'train' instead of 'test'",
        "imgs/0.png,a,train\nimgs/1.png,b,val\n": r"marks no image as a test image",
        "imgs/0.png,a,test\nimgs/1.png,b,TEST\n": r"marks no image as a training image",
    }
    for body, message in cases.items():
        (tmp_path / "bad.csv").write_text("path,caption,split\n" + body)
        capsys.readouterr()
        assert main(["train", "retriever", "--dataset", str(tmp_path / "bad.csv"), "--model", "avg",
                     "--out", str(tmp_path / "bad-run")]) == 2  # fmt: skip
        assert re.search(message, capsys.readouterr().err), message


def test_a_captioned_folder_of_train_and_test_parts_keeps_its_split(tmp_path, capsys):
    """train/ and test/ holding their images directly, with captions.tsv, were read as the
    classes "train" and "test"; they are a captioned collection with its own split."""
    from semid.data.image_files import load_image_collection

    folder, captions = tmp_path / "shots", []
    for part, n in (("train", 8), ("test", 2)):
        for i in range(n):
            kind = ("dark", "bright")[i % 2]
            write_image(folder / part / f"{i}.png", 40 if kind == "dark" else 220, seed=i)
            captions.append(f"{part}/{i}.png\ta {kind} square {part} {i}")
    (folder / "captions.tsv").write_text("\n".join(captions) + "\n")
    splits = load_image_collection(folder, seed=1)
    assert splits.test.keys == ["test/0.png", "test/1.png"] and len(splits.train) == 8
    assert splits.train.labels is None and splits.train.class_names is None
    assert splits.test.captions == ["a dark square test 0", "a bright square test 1"]
    run = build_and_train(folder, tmp_path)
    out = capsys.readouterr().out
    assert "classes" not in out and "captions" in out
    assert evaluate(run, "1", "2")["num_queries"] == 2
    # without captions such parts are still read as classes (they may be classes)
    (folder / "captions.tsv").unlink()
    assert load_image_collection(folder).train.class_names == ["test", "train"]


def test_a_run_inside_its_image_folder_resumes_and_evaluates(tmp_path, capsys, monkeypatch):
    """`cd photos && semid train retriever --dataset . --out runs/avg`: the run (and its lock and
    temporary files) is written inside the data folder, and is not taken for a change of the data."""
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=10)
    monkeypatch.chdir(tmp_path / "photos")
    train = ["train", "retriever", "--dataset", ".", "--model", "avg", "--quantizer", SPEC,
             "--epochs", "1", "--out", "runs/avg"]  # fmt: skip
    assert main(train) == 0
    capsys.readouterr()
    assert main(train) == 0
    assert "resuming from step" in capsys.readouterr().err
    assert main(["eval", "runs/avg", "--k", "4"]) == 0


def test_eval_works_after_adding_unseen_classes_unlabelled_and_colour_images(
    tmp_path, capsys, monkeypatch
):
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=10)
    run = build_and_train(tmp_path / "photos", tmp_path)
    before = evaluate(run, "1", "4")
    write_classes(tmp_path / "more", {"mid": 128}, per_class=3, colour=True)  # unseen, in colour
    capsys.readouterr()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "more")]) == 0
    out, err = capsys.readouterr()
    assert f"added 3 images to {run}" in out
    assert (
        "semid: note: added images of classes the run was not trained on: 'mid' (3 images);" in err
    )
    write_classes(
        tmp_path / "again", {"Dark": 40}, per_class=1
    )  # a class the run knows, case aside
    assert main(["index", "add", str(run), "--items", str(tmp_path / "again")]) == 0
    assert "not trained on" not in capsys.readouterr().err
    write_image(tmp_path / "loose" / "x.png", 40)
    (tmp_path / "loose" / "add.csv").write_text("path,caption\nx.png,a dark square\n")
    assert main(["index", "add", str(run), "--items", str(tmp_path / "loose" / "add.csv")]) == 0
    assert ("semid: note: added 1 image without a class to a run of classes: `semid eval` counts "
            "it relevant to no query") in capsys.readouterr().err  # fmt: skip
    adds = json.loads((run / "config.json").read_text())["adds"]
    added = ["more", "again", "loose/add.csv"]
    assert [a["source"] for a in adds] == [str((tmp_path / p).resolve()) for p in added]
    labelled = spy_image_labels(monkeypatch, run)
    after = evaluate(run, "1", "4")
    assert after["invalid_id_rate"] == 0 and 0 <= after["precision@4"] <= 1
    assert ("the index holds 5 images added with `semid index add` beside the 4 test images: the "
            "figures rank them all") in capsys.readouterr().err  # fmt: skip
    # an added "Dark" image is relevant to the queries of the class "dark"; unseen or unlabelled
    # ones to none
    dark = {v for k, v in labelled.items() if k.startswith("dark/")}
    assert len(dark) == 1 and labelled["again/Dark/Dark0.png"] in dark
    assert labelled["more/mid/mid0.png"] == labelled["x.png"] == -1
    assert set(after) == set(before)
    # answers show each image's class, or the caption it was added with
    out = tmp_path / "answers.jsonl"
    assert main(["predict", str(run), "--query", "a photo", "--k", "9", "--texts",
                 "--out", str(out)]) == 0  # 4 test images and 5 added  # fmt: skip
    (answer,) = [json.loads(line) for line in out.read_text().splitlines()]
    shown = dict(zip(answer["keys"], answer["texts"], strict=True))
    assert shown.pop("more/mid/mid2.png") == "mid" and shown.pop("x.png") == "a dark square"
    built = {k: t for k, t in shown.items() if not k.startswith("more/")}
    assert len(built) == 5 and all(k.split("/")[-2] == t for k, t in built.items()), built


def test_a_table_label_spelled_as_a_class_folder_is_that_class(tmp_path, capsys, monkeypatch):
    """A folder `dark-grey/` is the class "dark grey"; a table labelling images `dark-grey` added
    them as a class the run was not trained on, relevant to no query."""
    write_classes(tmp_path / "photos", {"dark-grey": 40, "bright": 220}, per_class=4)
    run = build_and_train(tmp_path / "photos", tmp_path)
    write_image(tmp_path / "new" / "x.png", 40)
    (tmp_path / "new" / "add.csv").write_text("path,label\nx.png,dark-grey\n")
    capsys.readouterr()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "new" / "add.csv")]) == 0
    assert "not trained on" not in capsys.readouterr().err
    labelled = spy_image_labels(monkeypatch, run)
    evaluate(run, "1")
    dark = {v for k, v in labelled.items() if k.startswith("dark-grey/")}
    assert len(dark) == 1 and labelled["x.png"] in dark


@pytest.mark.parametrize("layout", ["empty", "flat"])
def test_a_folder_without_class_subfolders_is_told_both_layouts(tmp_path, capsys, layout):
    (tmp_path / "data").mkdir()
    if layout == "flat":
        write_image(tmp_path / "data" / "a.png", 40)
    assert (
        main(["index", "build", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "i")])
        == 2
    )
    err = capsys.readouterr().err
    assert "one subfolder per class" in err and "GroupLens" in err and "Traceback" not in err


def test_a_class_folder_that_cannot_be_listed_is_one_line(tmp_path, capsys, monkeypatch):
    """An unreadable subfolder (chmod 000, as another user) gave a PermissionError traceback. Root
    lists any folder, so listing that one is made to fail as it would for another user."""
    write_classes(tmp_path / "data", {"coat": 40, "dress": 200}, 3)
    locked, iterdir = tmp_path / "data" / "dress", Path.iterdir

    def listing(folder):
        if folder == locked:
            raise PermissionError(13, "Permission denied", str(folder))
        return iterdir(folder)

    monkeypatch.setattr(Path, "iterdir", listing)
    argv = ["index", "build", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "i")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot list {locked}: Permission denied; make it readable" in err
    assert "Traceback" not in err


def test_adding_images_to_a_bare_index_names_the_run_folder(tmp_path, capsys):
    (tmp_path / "run" / "index" / "image_encoder").mkdir(parents=True)
    (tmp_path / "run" / "manifest.json").write_text('{"task": "text2image"}')
    write_classes(tmp_path / "more", {"dark": 40}, per_class=1)
    target = tmp_path / "run" / "index"
    assert main(["index", "add", str(target), "--items", str(tmp_path / "more")]) == 2
    assert f"semid index add {tmp_path / 'run'} --items" in capsys.readouterr().err


def test_added_folders_get_keys_of_their_own_and_a_repeated_add_names_the_fix(tmp_path, capsys):
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    for folder in ("more", "more2"):  # the same layout and file names as each other
        write_classes(tmp_path / folder, {"dark": 40}, per_class=2)
        assert main(["index", "add", str(run), "--items", str(tmp_path / folder)]) == 0
    keys = json.loads((run / "index" / "keys.json").read_text())
    assert keys[-4:] == ["more/dark/dark0.png", "more/dark/dark1.png", "more2/dark/dark0.png",
                         "more2/dark/dark1.png"]  # fmt: skip
    capsys.readouterr()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "more")]) == 2
    err = capsys.readouterr().err
    assert (
        "every image of" in err and "is already indexed (e.g. 'more/dark/dark0.png'); rename" in err
    )
    write_classes(tmp_path / "more", {"dark": 40}, per_class=3)  # the folder grew by one image
    assert (
        main(["index", "add", str(run), "--items", str(tmp_path / "more"), "--skip-indexed"]) == 0
    )
    assert "left out 2 images of" in capsys.readouterr().out
    assert json.loads((run / "index" / "keys.json").read_text())[len(keys) :] == [
        "more/dark/dark2.png"
    ]
    assert (
        main(["index", "add", str(run), "--items", str(tmp_path / "more"), "--skip-indexed"]) == 0
    )
    assert "nothing to add: every image of" in capsys.readouterr().out
    # another folder named "more", of other pictures under the same names: they were left out as
    # indexed ("nothing to add"), and never indexed
    write_classes(tmp_path / "elsewhere" / "more", {"dark": 220}, per_class=3)
    argv = ["index", "add", str(run), "--items", str(tmp_path / "elsewhere" / "more")]
    assert main([*argv, "--skip-indexed"]) == 2
    assert ("3 images of" in (err := capsys.readouterr().err) and "have the key of an indexed "
            "image but other pixels (e.g. 'more/dark/dark0.png')" in err)  # fmt: skip


def test_the_training_folder_added_again_keeps_the_keys_its_indexed_images_have(tmp_path, capsys):
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    indexed = json.loads((run / "index" / "keys.json").read_text())
    write_image(tmp_path / "photos" / "dark" / "dark9.png", 40, seed=9)  # the folder grew
    capsys.readouterr()
    add = ["index", "add", str(run), "--items", str(tmp_path / "photos")]
    assert main(add) == 2  # its indexed images are the same images, not new ones
    err = capsys.readouterr().err
    photos = tmp_path / "photos"
    assert f"{len(indexed)} of the 11 images of {photos} (the folder the run was trained on)" in err
    assert "trained on) are already indexed (e.g. " in err
    assert (
        f"pass --skip-indexed to add only the {11 - len(indexed)} new ones, or add the new" in err
    )
    assert main([*add, "--skip-indexed"]) == 0
    assert f"left out {len(indexed)} images of" in capsys.readouterr().out
    keys = json.loads((run / "index" / "keys.json").read_text())
    assert keys[: len(indexed)] == indexed and "dark/dark9.png" in keys[len(indexed) :]
    assert len(keys) == 11 and len(set(keys)) == 11  # each file of the folder once


def test_a_table_that_lists_an_indexed_image_by_another_spelling_of_its_path_leaves_it_out(
    tmp_path, capsys
):
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    for name in ("x.png", "y.png"):
        write_image(tmp_path / "loose" / name, 40)
    (tmp_path / "loose" / "a.csv").write_text("path,label\nx.png,dark\n")
    (tmp_path / "loose" / "b.csv").write_text(
        "path,label\n./x.png,dark\ny.png,dark\n"
    )  # ./x.png: x.png
    assert main(["index", "add", str(run), "--items", str(tmp_path / "loose" / "a.csv")]) == 0
    capsys.readouterr()
    add = ["index", "add", str(run), "--items", str(tmp_path / "loose" / "b.csv"), "--skip-indexed"]
    assert main(add) == 0
    assert "left out 1 image of" in capsys.readouterr().out
    assert json.loads((run / "index" / "keys.json").read_text())[-2:] == ["x.png", "y.png"]


def test_an_add_interrupted_before_its_labels_are_written_leaves_the_run(tmp_path, monkeypatch,
                                                                         capsys):  # fmt: skip
    """The new images' codes, features and labels go in as one change: an add stopped (Ctrl-C)
    after the index is written leaves the run as it was, and the retry is not refused."""
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    names = ["index/keys.json", "index/codes.safetensors", "config.json"]
    before = {name: (run / name).read_bytes() for name in names}
    write_classes(tmp_path / "more", {"dark": 40}, per_class=2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(text2image_module, "write_run", interrupted)
    capsys.readouterr()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "more")]) == 130
    assert "an add stopped before its end leaves the run or index as it was: run" in (
        capsys.readouterr().err
    )
    assert {name: (run / name).read_bytes() for name in names} == before
    monkeypatch.undo()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "more")]) == 0
    assert (
        "more/dark/dark1.png"
        in json.loads((run / "config.json").read_text())["state"]["added_labels"]
    )


def test_a_folder_with_its_own_train_and_test_parts_keeps_its_split(tmp_path):
    """train/<class>/..., val/<class>/... and test/<class>/... (a common layout) were read as the
    classes "train", "val" and "test"; the test part is now the indexed test side."""
    from semid.data.image_files import load_image_collection

    for part, n in (("train", 4), ("val", 1), ("test", 2)):
        write_classes(tmp_path / "photos" / part, {"red_fox": 40, "cat": 200}, per_class=n)
    splits = load_image_collection(tmp_path / "photos", seed=3)
    assert splits.train.class_names == splits.test.class_names == ["cat", "red fox"]
    assert splits.test.keys == [
        f"test/{c}/{c}{i}.png" for c in ("cat", "red_fox") for i in range(2)
    ]
    assert sorted(splits.train.keys) == sorted(
        f"{part}/{c}/{c}{i}.png" for part, n in (("train", 4), ("val", 1))
        for c in ("cat", "red_fox") for i in range(n)
    )  # fmt: skip
    assert splits.test.labels.tolist() == [0, 0, 1, 1]
    # a class named "train" beside other classes is a class, and so is a part without classes
    write_classes(tmp_path / "vehicles", {"train": 40, "bus": 200, "test": 120}, per_class=3)
    assert load_image_collection(tmp_path / "vehicles").train.class_names == [
        "bus",
        "test",
        "train",
    ]
    write_classes(tmp_path / "flat", {"train": 40, "test": 200}, per_class=3)
    assert load_image_collection(tmp_path / "flat").train.class_names == ["test", "train"]


def test_a_class_only_in_the_test_part_is_noted(tmp_path, capsys):
    from semid.data.image_files import load_image_collection

    write_classes(tmp_path / "photos" / "train", {"cat": 200}, per_class=3)
    write_classes(tmp_path / "photos" / "test", {"cat": 200, "red_fox": 40}, per_class=2)
    splits = load_image_collection(tmp_path / "photos")
    assert splits.test.class_names == ["cat", "red fox"]
    err = capsys.readouterr().err
    assert "1 class of" in err and "('red fox') has images only in its test part" in err
    write_classes(tmp_path / "photos" / "train", {"red_fox": 40}, per_class=3)
    load_image_collection(tmp_path / "photos")
    assert "only in its test part" not in capsys.readouterr().err


def test_a_flat_captioned_folder_reads_every_caption_line_of_an_image(tmp_path, capsys):
    """Images directly in the folder with a captions.tsv were refused with advice that failed; an
    image on two lines lost its first caption. Now: a captioned collection, both captions kept."""
    from semid.data.image_files import load_image_collection

    folder, lines = tmp_path / "flat", ["", "path\tcaption"]  # a header line is allowed
    for i in range(10):
        kind = ("dark", "bright")[i % 2]
        write_image(folder / f"{i}.png", 40 if kind == "dark" else 220, seed=i)
        lines.append(f"{i}.png\ta {kind} square {i}")
    lines.append("0.png\tanother dark square")
    (folder / "captions.tsv").write_text("\n".join(lines) + "\n")
    data = load_image_collection(folder, seed=0)
    both = {**dict(zip(data.train.keys, data.train.more_captions or [], strict=False)),
            **dict(zip(data.test.keys, data.test.more_captions or [], strict=False))}  # fmt: skip
    assert both["0.png"] == ("another dark square",) and len(data.train) + len(data.test) == 10
    assert data.train.class_names is None
    run = build_and_train(folder, tmp_path)
    assert evaluate(run, "1")["num_queries"] == len(data.test) + ("0.png" in data.test.keys)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0.png", "line 2 has no caption"),
        ("0.png\t  ", "line 2 has no caption"),
        ("ghost.png\ta ghost", "line 2 names 'ghost.png', which is no image"),
    ],
)
def test_bad_caption_lines_are_named(tmp_path, line, message):
    from semid.data.image_folders import load_image_folder

    write_image(tmp_path / "f" / "0.png", 40)
    (tmp_path / "f" / "captions.tsv").write_text(f"0.png\ta dark square\n{line}\n")
    with pytest.raises(SemidError, match=message):
        load_image_folder(tmp_path / "f")


def test_train_and_val_parts_without_a_test_part_are_no_classes(tmp_path):
    from semid.data.image_folders import load_image_folder

    for part in ("train", "val"):
        write_classes(tmp_path / "f" / part, {"dark": 40, "bright": 220}, 2)
    with pytest.raises(
        SemidError, match=r"are split parts, not classes, .*: rename the part of the test"
    ):
        load_image_folder(tmp_path / "f")
    shutil.rmtree(tmp_path / "f" / "val")
    (tmp_path / "f" / "train").rename(tmp_path / "f" / "test")  # test/ alone: no training part
    with pytest.raises(SemidError, match=r"add a train/ part with the training images"):
        load_image_folder(tmp_path / "f")


def test_a_file_name_that_is_not_utf8_is_named_before_any_work(tmp_path):
    import os

    from semid.data.image_folders import load_image_folder

    write_classes(tmp_path / "f", {"dark": 40}, 2)
    os.rename(
        tmp_path / "f" / "dark" / "dark0.png",
        os.fsencode(tmp_path / "f" / "dark") + b"/caf\xe9.png",
    )
    with pytest.raises(SemidError, match=r"caf\\xe9.png: the file name is not valid UTF-8; rename"):
        load_image_folder(tmp_path / "f")


def test_json_lines_captions_that_are_a_string_in_one_row_stay_apart_in_the_others(tmp_path):
    from semid.data.image_files import load_image_collection

    rows = []
    for i in range(6):
        write_image(tmp_path / f"{i}.png", 40 + 30 * i, seed=i)
        rows.append({"image": f"{i}.png", "captions": [f"shade {i}", f"tone {i}"]})
    rows[2]["captions"] = "just one"
    rows[3]["captions"] = ["shade 3", None, 5]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_image_collection(tmp_path / "t.jsonl", seed=0)
    captions = {}
    for part in (data.train, data.test):
        texts, rows_of = part.caption_queries()
        for text, row in zip(texts, rows_of.tolist(), strict=True):
            captions.setdefault(part.keys[row], []).append(text)
    assert captions["0.png"] == ["shade 0", "tone 0"] and captions["2.png"] == ["just one"]
    assert captions["3.png"] == ["shade 3", "5"]


def test_a_semicolon_csv_whose_captions_hold_commas_is_read(tmp_path):
    from semid.data.image_files import load_image_collection

    lines = ["path;caption"]
    for i in range(5):
        write_image(tmp_path / f"{i}.png", 40 + 40 * i, seed=i)
        lines.append(f"{i}.png;a square, shade {i}")
    (tmp_path / "t.csv").write_text("\n" + "\n".join(lines) + "\n")  # a blank line first, too
    data = load_image_collection(tmp_path / "t.csv", seed=0)
    assert sorted(data.train.captions + data.test.captions)[0] == "a square, shade 0"


def test_queries_of_a_class_without_a_test_image_are_left_out_with_a_note(tmp_path, capsys):
    """A class of one image has it on the training side: its queries could only miss, and capped
    the figures unsaid (recall 0.667 for a model that found every answerable image)."""
    from semid.data.images import class_queries

    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=6)
    write_classes(tmp_path / "photos", {"mid": 128}, per_class=1)
    run = build_and_train(tmp_path / "photos", tmp_path)
    capsys.readouterr()
    metrics = evaluate(run, "1")
    err = capsys.readouterr().err
    per_class = len(class_queries("test", ["bright", "dark", "mid"])[0]) // 3
    assert metrics["num_queries"] == 2 * per_class
    assert (
        f"{per_class} test queries of {3 * per_class} ask for a class no indexed image has" in err
    )
    assert "'mid'" in err or "mid" in err.split("e.g.")[1]


def test_notes_beside_the_images_change_no_fingerprint_but_an_image_does(tmp_path, capsys):
    """A README (or notes in a class folder) put beside the images after training made `semid
    eval` refuse the run as trained on other data; only the files the reader reads count now."""
    from semid.data.tables import content_sha256

    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    (tmp_path / "photos" / "LICENSE").write_text("CC-BY\n")
    run = build_and_train(tmp_path / "photos", tmp_path)
    (tmp_path / "photos" / "README.txt").write_text("my photos\n")
    (tmp_path / "photos" / "dark" / "notes.txt").write_text("taken at night\n")
    write_image(tmp_path / "photos" / "@eaDir" / "dark0.png" / "SYNOPHOTO_THUMB_S.png", 50)
    evaluate(run, "1")
    # a run from before, whose hash covered every file of the folder, is still checked that way
    config = json.loads((run / "config.json").read_text())
    config["state"]["data_sha256"] = content_sha256(tmp_path / "photos")
    (run / "config.json").write_text(json.dumps(config))
    evaluate(run, "1")
    write_image(tmp_path / "photos" / "dark" / "dark0.png", 90)  # an image changed
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "1"]) == 2
    err = capsys.readouterr().err
    assert "changed since training" in err
    assert f"new images go in a folder of their own, indexed with `semid index add {run} " in err


def test_messages_for_a_users_image_mistakes_name_the_fix(tmp_path):
    """Each mistake an audit of own image folders made is told plainly (the words it checks)."""
    from semid.data.image_files import load_image_collection, load_images
    from semid.tasks.data import sniff_kind
    from semid.tasks.text2image import added_images

    write_image(tmp_path / "flat" / "a.png", 40)
    with pytest.raises(SemidError, match="holds images but no class subfolders; put them in"):
        load_images(tmp_path / "flat")
    with pytest.raises(SemidError, match="nope not found"):
        load_images(tmp_path / "nope")
    with pytest.raises(SemidError, match="a.png is an image; pass the folder"):
        sniff_kind(str(tmp_path / "flat" / "a.png"))
    with pytest.raises(SemidError, match="items.npy --keys KEYS.txt"):
        sniff_kind(str(tmp_path / "items.npy"))
    (tmp_path / "folder.csv").write_text("path,caption\nflat,a dark square\n")
    with pytest.raises(SemidError, match="line 2: .*flat is a folder; list the image files"):
        load_image_collection(tmp_path / "folder.csv")
    (tmp_path / "blank.csv").write_text("path,caption\nflat/a.png,   \n")
    with pytest.raises(SemidError, match=r"line 2: empty caption \(1 row\)"):
        load_image_collection(tmp_path / "blank.csv")
    (tmp_path / "again.csv").write_text("path,caption\n./flat/a.png,a dark square\n")
    with pytest.raises(
        SemidError, match=r"every image of .*again.csv is already indexed \(e.g. './flat/a.png'\)"
    ):
        added_images(tmp_path / "again.csv", 12, ["flat/a.png"])


def test_files_that_are_not_part_of_the_collection_are_counted_in_a_note(tmp_path, capsys):
    from semid.data.image_folders import load_image_folder

    write_classes(tmp_path / "f", {"dark": 40, "bright": 220}, 2)
    (tmp_path / "f" / "README.txt").write_text("about")
    (tmp_path / "f" / "dark" / "scan.psd").write_bytes(b"8BPS")
    (tmp_path / "f" / "features.npy").write_bytes(b"")  # beside the class folders: no class
    (tmp_path / "f" / "dark" / "Thumbs.db").write_bytes(b"")  # a file browser's, never data
    assert len(load_image_folder(tmp_path / "f")) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"semid: note: {tmp_path / 'f'}: 3 files not part of the collection, left out (e.g. "
        "'README.txt'; images are .png, .jpg, .jpeg, .jfif, .jpe, .bmp, .gif, .pgm, .ppm, .npy, "
        ".webp, .avif, .tif, .tiff files in class subfolders or split parts, or beside a "
        "captions.tsv)"
    ]
    for name in ("README.txt", "dark/scan.psd", "features.npy"):
        (tmp_path / "f" / name).unlink()
    (tmp_path / "f" / "captions.tsv").write_text(
        "".join(f"{c}/{c}{i}.png\ta {c} square\n" for c in ("dark", "bright") for i in range(2))
    )
    load_image_folder(tmp_path / "f")
    assert capsys.readouterr().err == ""  # captions.tsv is read, not left out
    (tmp_path / "f" / "dark" / "captions.tsv").write_text("dark0.png\tnot read\n")
    load_image_folder(tmp_path / "f")
    assert "1 file not part of the collection, left out (e.g. 'dark/captions.tsv';" in (
        capsys.readouterr().err
    )


def test_captions_shared_by_several_test_images_are_counted_in_a_note(capsys):
    import torch

    from semid.tasks.text2image import note_shared_captions

    texts = ["a red circle", "A red  circle", "a blue square", "a red circle"]
    note_shared_captions(texts, torch.tensor([0, 1, 2, 0]))  # images 0 and 1 share one caption
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("semid: note: 3 test queries of 4 are captions of several test images "
                           "(e.g. 'a red circle'); each counts only the image it captions")  # fmt: skip
    note_shared_captions(texts[2:], torch.tensor([2, 0]))  # each caption of one image
    assert capsys.readouterr().err == ""


def test_unknown_classes_are_told_only_against_a_recorded_class_list(capsys):
    from semid.tasks.text2image import _note_unknown_classes

    _note_unknown_classes(["mid", "dark", None], ["bright", "dark"])
    assert "not trained on: 'mid' (1 image);" in capsys.readouterr().err
    for trained in (None, "dark", {"dark": 1}):  # an index of captions, or an older or edited one
        _note_unknown_classes(["mid"], trained)
        assert capsys.readouterr().err == ""


def test_queries_asked_of_a_run_are_not_cached(tmp_path, capsys, monkeypatch):
    """Every new query text of predict and serve was written to the embedding cache, which nothing
    clears; where the cache cannot be written (HOME read-only), each query was refused (a 400 from
    a server that started healthy). eval's test queries come back, so they stay cached."""
    from semid.tasks import get_task

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    cache = tmp_path / "cache" / "embeddings"
    before = set(cache.glob("*.npy"))
    predictor = get_task("text2image").predictor(load_run(run))
    answers = predictor.predict([{"query": "a dark picture, never asked before"}], k=2)
    assert len(answers[0]["keys"]) == 2 and set(cache.glob("*.npy")) == before
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "a bright one, new too", "--k", "2"]) == 0
    assert set(cache.glob("*.npy")) == before


def test_a_run_on_a_users_folder_tells_that_its_training_images_wait_for_an_add(tmp_path, capsys):
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    run = build_and_train(tmp_path / "photos", tmp_path)
    out = capsys.readouterr().out
    add = f"semid index add RUN --items {tmp_path / 'photos'} --skip-indexed"
    assert f"a run trained on this index searches the training images too once `{add}`" in out
    assert "search its 8 training images too (its index holds the 2 test images): " in out
    assert main(["predict", str(run), "--query", "a dark photo", "--k", "2"]) == 0
    err = capsys.readouterr().err
    assert f"searches the test images of {tmp_path / 'photos'}, not its 8 training images" in err
    assert (
        main(["index", "add", str(run), "--items", str(tmp_path / "photos"), "--skip-indexed"]) == 0
    )
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "a dark photo", "--k", "10"]) == 0
    assert "training images" not in capsys.readouterr().err  # all 10 are searched now


def test_documents_and_images_given_to_each_other_s_model_name_the_right_one(tmp_path, capsys):
    """A corpus trained as images, a folder of images as documents and a document index as an
    image index each name the other model or build (they named a missing internal file, a
    column to rename in a good corpus, or a missing corpus.jsonl)."""
    from semid.data.beir import read_beir
    from semid.data.image_files import load_image_collection

    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "a tool", "queries": ["q"]}\n')
    with pytest.raises(SemidError, match=r"holds documents \(id, text, queries\), not a list of "
                                         r"images .*train with --model promptdsi"):  # fmt: skip
        load_image_collection(tmp_path / "docs.jsonl")
    (tmp_path / "captions.csv").write_text("img,text\na.png,a dark square\n")  # images, misnamed
    with pytest.raises(SemidError, match="lacks a path column"):
        load_image_collection(tmp_path / "captions.csv")
    write_classes(tmp_path / "photos", {"dark": 40, "bright": 220}, per_class=5)
    with pytest.raises(SemidError, match="it holds images, which train with --model avg"):
        read_beir(tmp_path / "photos")
    (tmp_path / "docs.jsonl").write_text(
        "".join(
            f'{{"id": "d{i}", "text": "tool number {i}", "queries": ["q{i}"]}}\n' for i in range(8)
        )  # fmt: skip
    )
    index = tmp_path / "docidx"
    assert main(["index", "build", "--dataset", str(tmp_path / "docs.jsonl"), "--quantizer",
                 "rqkmeans:2x2", "--out", str(index)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", "retriever", "--dataset", str(tmp_path / "photos"), "--model", "avg",
                 "--index", str(index), "--epochs", "1", "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    assert f"--index {index} is not an index of images" in capsys.readouterr().err
