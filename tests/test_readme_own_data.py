"""The README's "Your own data" examples, command for command, on small files the tests write; plus
the embedded ml-100k exported as plain files (same split, same metrics), changed data refused, and
a moved run that still evaluates, alone or with its data."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _semid_cli import ENV, command, finish, saved_metrics, semid
from test_cli_subprocess import TINY_PROMPTDSI, write_class_folders

from semid.cli.main import main
from semid.data.registry import load_dataset
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.runs import load_run
from semid.tasks import get_task, load_predictor
from semid.tasks.items import source_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY_MMGREC = '{"dim": 16, "layers": 1, "decoder_layers": 1}'
RECOMMEND_BUDGET = ["--model-config", TINY_MMGREC, "--epochs", "1", "--batch-size", "16"]
DOCS_BUDGET = ["--model-config", json.dumps(TINY_PROMPTDSI), "--epochs", "1", "--add-epochs", "1", "--num-beams", "10"]  # fmt: skip
GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance", "Sci-Fi"]
WORDS = "kernel audio python font game network editor printer camera database shell mail".split()


def cli(line: str, *extra: str) -> int:
    """One README command line (``semid ...``) with ``extra`` arguments (a tiny budget), in-process."""
    argv = shlex.split(line)
    assert argv[0] == "semid"
    return main([*argv[1:], *extra])


def write_interactions(folder: Path, users: int = 40, items: int = 30) -> None:
    """interactions.csv (user,item,timestamp; string ids) and items.csv (item,title,genres)."""
    rng = random.Random(0)
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "title", "genres"])
        for i in range(items):
            w.writerow([f"m{i}", f"Movie number {i}", "|".join(rng.sample(GENRES, 2))])
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for u in range(1, users + 1):
            for t, i in enumerate(rng.sample(range(items), rng.randint(5, 9))):
                w.writerow([f"u{u}", f"m{i}", 1_000_000 + 1000 * u + t])


def test_interactions_example(tmp_path, monkeypatch, capsys):
    write_interactions(tmp_path)
    (tmp_path / "new_items.csv").write_text(
        "item,title,genres\nm100,Movie number 100,Drama|Comedy\n"
    )
    monkeypatch.chdir(tmp_path)
    assert (
        cli("semid index build --dataset interactions.csv --items items.csv --out runs/mine/index")
        == 0
    )
    assert (
        cli(
            "semid train recommender --dataset interactions.csv --items items.csv --index runs/mine/index "
            "--model mmgrec --out runs/mine/mmgrec",
            *RECOMMEND_BUDGET,
        )
        == 0
    )
    capsys.readouterr()
    assert cli("semid eval runs/mine/mmgrec") == 0
    metrics = saved_metrics(tmp_path / "runs/mine/mmgrec")
    assert metrics["num_queries"] == 40 and metrics["invalid_id_rate"] == 0
    assert cli("semid predict runs/mine/mmgrec --user u1 --k 10") == 0
    out = capsys.readouterr().out
    assert '{"user": "u1"}' in out and out.count(" m") >= 10
    assert cli("semid index add runs/mine/mmgrec --items new_items.csv") == 0
    assert "added 1 item " in capsys.readouterr().out
    assert "m100" in SemanticIDs.load(tmp_path / "runs/mine/mmgrec/index").keys
    # the answers table shows each item's text from the items file; an added item has none
    assert cli("semid predict runs/mine/mmgrec --user u1 --k 5") == 0
    header, _, *rows = capsys.readouterr().out.splitlines()[1:]
    assert header.split()[-1] == "text" and len(rows) == 5
    for row in rows:
        assert f"title: Movie number {row.split()[1][1:]}; genres: " in row
    texts = load_predictor(tmp_path / "runs/mine/mmgrec").item_texts(["m100", "m2"])
    assert texts[0] == "title: Movie number 100; genres: Drama|Comedy"  # added by `index add`
    assert texts[1].startswith("title: Movie number 2; genres: ")
    # the train command again would replace the run by one without the added item: refused
    capsys.readouterr()
    assert cli("semid train recommender --dataset interactions.csv --items items.csv --index runs/mine/index "
               "--model mmgrec --out runs/mine/mmgrec", *RECOMMEND_BUDGET) == 2  # fmt: skip
    assert (
        "holds 1 item added with `semid index add` since it was trained" in capsys.readouterr().err
    )
    assert "m100" in SemanticIDs.load(tmp_path / "runs/mine/mmgrec/index").keys


def make_docs(n: int = 40) -> list[dict]:
    """n documents about a dozen topics, each with one query."""
    rng = random.Random(0)
    docs = []
    for i in range(n):
        topic = WORDS[i % len(WORDS)]
        text = " ".join([topic] * 3 + rng.sample(WORDS, 5) + [f"pkg{i}"])
        docs.append({"id": f"pkg{i}", "text": text, "queries": [f"{topic} tool pkg{i}"]})
    return docs


@pytest.mark.parametrize("corpus", ["docs.jsonl.gz", "docs.csv"])
def test_documents_example(corpus, tmp_path, monkeypatch, capsys):
    docs = make_docs()
    if corpus.endswith(".jsonl.gz"):
        with gzip.open(tmp_path / corpus, "wt") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
    else:
        with open(tmp_path / corpus, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "queries"])
            w.writerows([d["id"], d["text"], d["queries"][0]] for d in docs)
    monkeypatch.chdir(tmp_path)
    assert (
        cli(
            f"semid train retriever --dataset {corpus} --model promptdsi --out runs/docs",
            *DOCS_BUDGET,
        )
        == 0
    )
    later = tmp_path / "runs/docs/later.jsonl"
    assert later.is_file() and later.read_text().strip()
    assert cli("semid eval runs/docs --k 1 10") == 0
    metrics = saved_metrics(tmp_path / "runs/docs")
    assert metrics["d0-test/num_queries"] > 0 and metrics["d0-test/invalid_id_rate"] == 0
    assert type(metrics["d0-test/num_queries"]) is int
    assert cli("semid index add runs/docs --docs runs/docs/later.jsonl") == 0
    capsys.readouterr()
    assert cli('semid predict runs/docs --query "fast image viewer" --k 5', "--out", "a.jsonl") == 0
    (answer,) = [json.loads(x) for x in Path("a.jsonl").read_text().splitlines()]
    assert len(answer["keys"]) == 5 and set(answer["keys"]) <= {d["id"] for d in docs}
    # the answers table shows each document's text; a document added since keeps its text
    capsys.readouterr()
    assert cli('semid predict runs/docs --query "fast image viewer" --k 5') == 0
    header, _, *rows = capsys.readouterr().out.splitlines()[1:]
    text_of = {d["id"]: d["text"] for d in docs}
    assert header.split()[-1] == "text" and len(rows) == 5
    for row in rows:
        assert text_of[row.split()[1]][:20] in row
    Path("extra.jsonl").write_text('{"id": "pkg-new", "text": "a brand new image viewer"}\n')
    assert cli("semid index add runs/docs --docs extra.jsonl") == 0
    texts = load_predictor(tmp_path / "runs/docs").item_texts(["pkg-new", "pkg0"])
    assert texts == ["a brand new image viewer", text_of["pkg0"]]
    capsys.readouterr()
    train = f"semid train retriever --dataset {corpus} --model promptdsi --out runs/docs"
    assert cli(train, *DOCS_BUDGET) == 2  # it would drop the documents added since
    assert "documents added with `semid index add` since it was trained" in capsys.readouterr().err
    assert "pkg-new" in SemanticIDs.load(tmp_path / "runs/docs/index").keys


def test_images_example(tmp_path, monkeypatch, capsys):
    # 20% of the images are indexed: 102, enough for the README's --k 100
    write_class_folders(tmp_path / "photos", 170)
    write_class_folders(tmp_path / "more_photos", 2, offset=100, seed=1)
    write_class_folders(tmp_path / "later_photos", 1, offset=200, seed=2)
    monkeypatch.chdir(tmp_path)
    assert cli("semid index build --dataset photos/ --out runs/photos/index") == 0
    assert (
        cli(
            "semid train retriever --dataset photos/ --model avg --index runs/photos/index --out runs/photos/avg",
            "--epochs",
            "1",
        )
        == 0
    )
    assert cli("semid eval runs/photos/avg --k 10 100") == 0
    metrics = saved_metrics(tmp_path / "runs/photos/avg")
    assert (
        metrics["invalid_id_rate"] == 0 and 0 <= metrics["recall@10"] <= metrics["recall@100"] <= 1
    )
    assert cli("semid index add runs/photos/avg --items more_photos/") == 0
    added = SemanticIDs.load(tmp_path / "runs/photos/avg/index").keys[-6:]
    assert sorted(Path(k).name for k in added) == sorted(
        p.name for p in Path("more_photos").glob("*/*.png")
    )
    # a second add still finds the image encoder the first one kept beside the grown index
    assert cli("semid index add runs/photos/avg --items later_photos/") == 0
    assert len(SemanticIDs.load(tmp_path / "runs/photos/avg/index")) == 102 + 6 + 3
    shutil.rmtree(tmp_path / "runs/photos/avg/index/image_encoder")  # a run an older add damaged
    capsys.readouterr()
    assert cli("semid index add runs/photos/avg --items later_photos/") == 2
    assert "image_encoder is missing" in capsys.readouterr().err
    assert (
        cli('semid predict runs/photos/avg --query "a photo of a red fox"', "--out", "fox.jsonl")
        == 0
    )
    (answer,) = [json.loads(x) for x in Path("fox.jsonl").read_text().splitlines()]
    assert answer["input"] == {"query": "a photo of a red fox"} and len(answer["keys"]) == 10


def export_ml100k(folder: Path) -> None:
    """ml-100k as a user's own files: string ids, rows shuffled, texts exactly MovieLens' own."""
    data = load_dataset("ml-100k")
    log = data.interactions
    rng = np.random.default_rng(0)
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for e in rng.permutation(len(log.users)).tolist():
            w.writerow(
                [data.user_keys[log.users[e]], data.item_keys[log.items[e]], int(log.timestamps[e])]
            )
    with open(folder / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "text"])
        w.writerows(
            [data.item_keys[i], data.item_texts[i]]
            for i in rng.permutation(len(data.item_keys)).tolist()
        )


def sequences(run: Path) -> dict[str, list[str]]:
    """Each user's time-ordered item keys in a run's (sliced) data; the last two are valid, test."""
    loaded = load_run(run)
    task = get_task("recommend")
    spec = task.spec_of(loaded)
    split = task.load_data(spec, loaded.ids, loaded).split
    users = source_dataset(spec).user_keys[: spec.users]
    keys = loaded.ids.keys
    return {users[u]: [keys[r] for r in split.sequence_items[split.ptr[u] : split.ptr[u + 1]].tolist()]
            for u in range(len(users))}  # fmt: skip


@pytest.mark.parametrize("model", ["pop", "mmgrec"])
def test_exported_ml100k_gives_the_same_split_and_metrics(model, tmp_path, monkeypatch):
    export_ml100k(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli("semid index build --dataset ml-100k --quantizer rqkmeans:2x16 --out index") == 0
    assert (
        cli(
            "semid index build --dataset ratings.csv --items movies.csv --quantizer rqkmeans:2x16 --out own-index"
        )
        == 0
    )
    ours, theirs = SemanticIDs.load("index"), SemanticIDs.load("own-index")
    # the same items (their codes may differ: the row order seeds k-means), so both runs use one index
    assert sorted(ours.keys) == sorted(theirs.keys)
    budget = ["--users", "30", "--epochs", "1", "--batch-size", "16", "--seed", "0"]
    if model == "mmgrec":
        budget += ["--model-config", TINY_MMGREC]
    assert (
        cli(
            f"semid train recommender --dataset ml-100k --index index --model {model} --out embedded",
            *budget,
        )
        == 0
    )
    assert cli(f"semid train recommender --dataset ratings.csv --items movies.csv --index index --model {model} "
               "--out exported", *budget) == 0  # fmt: skip
    assert sequences(tmp_path / "exported") == sequences(tmp_path / "embedded")
    for run in ("embedded", "exported"):
        assert cli(f"semid eval {run} --k 5 10") == 0
    assert saved_metrics(tmp_path / "exported") == saved_metrics(tmp_path / "embedded")


def test_changed_data_is_refused_and_a_moved_run_still_evaluates(tmp_path, monkeypatch, capsys):
    train_pop_run(tmp_path, monkeypatch)
    assert cli("semid eval run") == 0
    before = saved_metrics(tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "run", tmp_path / "elsewhere" / "moved")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli("semid eval moved") == 0
    assert saved_metrics(tmp_path / "elsewhere" / "moved") == before

    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m3,2000000\n")
    capsys.readouterr()
    assert cli("semid eval moved") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("semid: error:") and "changed since training" in err[0]
    )
    # predict answers from the log as it is now, and says so
    assert cli("semid predict moved --history m1 --k 2") == 0
    assert "Movie number" in capsys.readouterr().out
    capsys.readouterr()
    assert cli("semid predict moved --user u1 --k 2") == 0
    assert "changed since training: user histories come from" in capsys.readouterr().err
    # an items file moved away: answers without texts, and a note that says why
    shutil.move(tmp_path / "items.csv", tmp_path / "items-moved.csv")
    assert cli("semid predict moved --history m1 --k 2") == 0
    out, err = capsys.readouterr()
    assert "Movie number" not in out and out.splitlines()[1].split()[-1] == "ID"
    assert err.startswith("semid: note: answers shown without item texts: ")
    assert "items.csv" in err and len(err.strip().splitlines()) == 1


def test_a_project_folder_moved_whole_still_evaluates_and_answers(tmp_path, monkeypatch):
    """Data and runs moved together (a renamed or copied project folder): every command finds the
    data at its place beside the run; in fresh processes, from another directory."""
    project = tmp_path / "project"
    project.mkdir()
    write_interactions(project)
    monkeypatch.chdir(project)
    assert (
        cli("semid index build --dataset interactions.csv --items items.csv --out runs/index") == 0
    )
    assert cli("semid train recommender --dataset interactions.csv --items items.csv "
               "--index runs/index --model pop --out runs/pop") == 0  # fmt: skip
    assert cli("semid eval runs/pop") == 0
    before = saved_metrics(project / "runs" / "pop")
    monkeypatch.chdir(tmp_path)
    shutil.move(project, tmp_path / "renamed")
    run = tmp_path / "renamed" / "runs" / "pop"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    semid("eval", run, cwd=elsewhere)
    assert saved_metrics(run) == before
    answer = semid("predict", run, "--user", "u1", "--k", "2", cwd=elsewhere).stdout
    assert "Movie number" in answer  # the texts of the moved items file
    (tmp_path / "renamed" / "interactions.csv").unlink()  # gone from both places: refused
    err = semid("eval", run, cwd=elsewhere, expect=2).stderr
    assert "project/interactions.csv, which is gone" in err


def train_pop_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run``, a pop run on ``write_interactions``' files, trained in ``tmp_path`` (the cwd)."""
    write_interactions(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli("semid index build --dataset interactions.csv --items items.csv --out index") == 0
    assert cli("semid train recommender --dataset interactions.csv --items items.csv --index index "
               "--model pop --out run") == 0  # fmt: skip


def test_a_grown_log_is_answered_from_its_current_content(tmp_path, monkeypatch, capsys):
    """A log that grew after training: the same predictor re-reads it, so a user's new events count
    as seen, a new user is answered, and what cannot be answered is refused in one line."""
    train_pop_run(tmp_path, monkeypatch)
    predictor = load_predictor(tmp_path / "run")
    (before,) = predictor.predict([{"user": "u1"}], k=5)
    assert predictor.predict(
        [{"user": "u1", "split": "test"}], k=5
    )  # the trained data: splits work
    capsys.readouterr()
    top = before["keys"][0]
    with open(tmp_path / "items.csv", "a") as f:
        f.write("m999,A movie added after the index,Drama|Comedy\n")
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write(f"u1,{top},3000000\nu1,m999,3000001\nu99,{top},3000002\nu98,m999,3000003\n")

    (after,) = predictor.predict([{"user": "u1"}], k=5)
    assert top not in after["keys"] and after["keys"][:4] == before["keys"][1:]
    err = capsys.readouterr().err
    assert "changed since training" in err and "2 events on items outside the run's index" in err
    (new_user,) = predictor.predict([{"user": "u99"}], k=5)
    assert top not in new_user["keys"]
    assert capsys.readouterr().err == ""  # the note comes once per read of the data
    assert "u99" in predictor.user_keys and "u98" not in predictor.user_keys  # --users all
    with pytest.raises(SemidError, match='"split" needs the data .* changed since'):
        predictor.predict([{"user": "u1", "split": "test"}], k=5)
    with pytest.raises(SemidError, match="user 'u98' has no events on items of the run's index"):
        predictor.predict([{"user": "u98"}], k=5)
    with pytest.raises(SemidError, match="unknown user 'u97'; pass a user"):
        predictor.predict([{"user": "u97"}], k=5)
    assert cli("semid eval run") == 2  # the metrics need the data trained on


def test_a_log_line_still_being_written_is_read_once_it_ends(tmp_path, monkeypatch, capsys):
    """An appender caught mid-line (``u1,m`` of ``u1,m3``): the predictor reads the log up to its
    last whole line, instead of an event on another item (or a malformed row, which refused every
    user); the finished line is read. An items file saved without a last line feed is read whole."""
    train_pop_run(tmp_path, monkeypatch)
    items = tmp_path / "items.csv"
    items.write_bytes(items.read_bytes().rstrip(b"\r\n"))  # as an editor may save it
    predictor = load_predictor(tmp_path / "run")
    (before,) = predictor.predict([{"user": "u1"}], k=5)
    top, second = before["keys"][:2]
    capsys.readouterr()
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write(f"u1,{top},3000000\nu1,")  # a whole line, then half of the next one
    for _ in range(2):
        (grown,) = predictor.predict([{"user": "u1"}], k=5)
        assert grown["keys"][:4] == before["keys"][1:5]  # the whole line is read
    assert "malformed" not in capsys.readouterr().err
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write(f"{second},3000001\n")
    (after,) = predictor.predict([{"user": "u1"}], k=5)
    assert after["keys"][:3] == before["keys"][2:5]  # both new events count as seen


def test_a_half_written_line_does_not_tell_the_data_changed(tmp_path, monkeypatch, capsys):
    """The log is hashed as far as it is read: a line its writer has not finished leaves the data
    the run was trained on, so a split's target is still answered and no change is noted."""
    train_pop_run(tmp_path, monkeypatch)
    predictor = load_predictor(tmp_path / "run")
    (before,) = predictor.predict([{"user": "u1", "split": "test"}], k=5)
    capsys.readouterr()
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m")
    (cut,) = predictor.predict([{"user": "u1", "split": "test"}], k=5)
    assert cut["keys"] == before["keys"]
    assert "changed since training" not in capsys.readouterr().err


def test_a_sasrec_answer_names_the_added_items_it_left_out(tmp_path, monkeypatch, capsys):
    """Items added to a sasrec run's index after training have no vector: a user whose recent
    events hold some, or a history of them, is answered from the others, and the answer (the
    table, --out's line, a model process's) names them once each; older events the model does not
    read (past --max-history) are not named, and a history it would read none of is refused."""
    write_interactions(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli("semid index build --dataset interactions.csv --items items.csv --out index") == 0
    assert cli("semid train recommender --dataset interactions.csv --items items.csv --index index "
               "--model sasrec --max-history 3 --epochs 1 --out run") == 0  # fmt: skip
    (tmp_path / "new.csv").write_text(
        "item,title,genres\n" + "".join(f"n{i},New movie {i},Drama|Comedy\n" for i in range(5))
    )
    assert cli("semid index add run --items new.csv") == 0
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,n0,3000000\nu1,n1,3000001\nu1,m5,3000002\nu1,n0,3000003\n"
                "u2,n0,3000004\nu2,n1,3000005\nu2,n2,3000006\n")  # fmt: skip
    predictor = load_predictor(tmp_path / "run")
    capsys.readouterr()
    user, history, old, many = predictor.predict(
        [{"user": "u1"}, {"history": ["n2", "m3", "n2"]}, {"history": ["n3", "m1", "m2", "m3"]},
         {"history": ["n0", "n1", "n2", "n3", "n4", "m1"][-3:]}], k=3)  # fmt: skip
    said = "added to the index after training and left out: a sasrec run reads only the items it"
    assert user["note"] == f"history items 'n1', 'n0' were {said} was trained on"
    assert history["note"] == f"history item 'n2' was {said} was trained on"
    assert "note" not in old  # n3 is past the 3 items the model reads
    assert many["note"] == f"history items 'n3', 'n4' were {said} was trained on"
    (nothing_read,) = predictor.predict([{"user": "u2"}], k=3)  # its last 3 events: added items
    assert nothing_read["note"] == (
        "history items 'n0', 'n1', 'n2' were added to the index after training and left out, so "
        "it was answered as no history: a sasrec run reads only the items it was trained on"
    )
    with pytest.raises(SemidError, match="the last 3 items of the history, which the model reads, "
                                         "were added to the index after"):  # fmt: skip
        predictor.predict([{"history": ["m1", "n0", "n1", "n2"]}], k=3)
    (resolved,) = load_predictor(tmp_path / "run").predict_resolved(
        predictor.resolve([{"user": "u1"}]), k=3
    )
    assert resolved["note"] == user["note"]
    capsys.readouterr()
    assert cli("semid predict run --history m1 n2 m3 --k 2") == 0
    assert f"note: history item 'n2' was {said} was trained on" in capsys.readouterr().out


def test_a_grown_log_counts_events_on_items_the_items_file_lacks(tmp_path, monkeypatch, capsys):
    """A new item often reaches the log before the items file: its events are outside the index
    like any other's, so the note counts them (they are not dropped unseen for lack of a text)."""
    train_pop_run(tmp_path, monkeypatch)
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m-not-in-items,3000000\nu1,m-not-in-items,3000001\nu1,m3,3000002\n")
    capsys.readouterr()
    (answer,) = load_predictor(tmp_path / "run").predict([{"user": "u1"}], k=5)
    assert "m3" not in answer["keys"]  # the new event on an indexed item counts as seen
    err = capsys.readouterr().err
    assert "changed since training" in err and "2 events on items outside the run's index" in err


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_training_stopped_with_ctrl_c_resumes_when_its_command_is_run_again(tmp_path, stop, code):
    """Ctrl-C (SIGINT) or `kill` (SIGTERM) in `semid train`, in a fresh process: exit 128 + the
    signal, one line saying how to carry on, no traceback; the same command then resumes from the
    last checkpoint and finishes."""
    write_interactions(tmp_path, users=60)
    semid("index", "build", "--dataset", "interactions.csv", "--out", "index", cwd=tmp_path)
    train = [*command(), "train", "recommender", "--dataset", "interactions.csv", "--index",
             "index", "--model", "sasrec", "--out", "run", "--epochs", "200", "--batch-size", "8",
             "--patience", "200"]  # fmt: skip
    # no early stop: a loaded machine may read "epoch 3" only after a run that stopped early ended
    env = ENV | {"PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal sends it: a suite started in the background (`make test &`) ignores
    # SIGINT, and its children inherit that, so the command gets the default disposition back
    proc = subprocess.Popen(train, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    seen = []
    while not (line := proc.stdout.readline()).startswith("epoch 3,"):
        assert line, "".join(seen)  # the command ended before its third epoch
        seen.append(line)
    proc.send_signal(stop)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == code, "".join(seen) + rest
    assert "Traceback" not in rest
    told = re.search(r"run the same command again to resume from its last checkpoint, at step "
                     r"([\d,]+)", rest)  # fmt: skip
    assert told, rest
    again = finish(subprocess.Popen([*train, "--epochs", "4"], cwd=tmp_path, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    assert f"resuming from step {told.group(1).replace(',', '')}" in again.stdout + again.stderr
    assert (tmp_path / "run" / "config.json").is_file()


def test_a_training_run_again_on_changed_data_does_not_resume_its_checkpoints(tmp_path):
    """The same train command after the log changed: the checkpoints learned from the old data, so
    resuming them is refused with the reason (fresh processes); --no-resume starts over."""
    write_interactions(tmp_path)
    semid("index", "build", "--dataset", "interactions.csv", "--out", "index", cwd=tmp_path)
    train = ["train", "recommender", "--dataset", "interactions.csv", "--index", "index",
             "--model", "sasrec", "--out", "run", "--batch-size", "8"]  # fmt: skip
    semid(*train, "--epochs", "1", cwd=tmp_path)
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m3,9999999\n")
    err = semid(*train, "--epochs", "2", cwd=tmp_path, expect=2).stderr
    assert "checkpoints were trained on other data (data '" in err and "--no-resume" in err
    assert len(err.strip().splitlines()) == 1
    done = semid(*train, "--epochs", "2", "--no-resume", cwd=tmp_path)
    assert "resuming" not in done.stdout + done.stderr
