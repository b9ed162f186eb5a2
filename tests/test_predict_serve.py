"""`semid predict` and the real `semid serve` on a tiny trained recommendation run: the answers are
the evaluation's rankings, and the server answers what predict answers."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from _semid_cli import ENV, command, read_jsonl, semid
from test_readme_own_data import write_interactions

from semid.cli.main import main
from semid.data.registry import load_dataset
from semid.errors import RunDataError, SemidError
from semid.locking import write_lock
from semid.model_process import ProcessPredictor
from semid.models import is_generator
from semid.reloading import ReloadingPredictor, follow_run
from semid.tasks import EvalOptions, get_task, load_predictor
from semid.tasks.recommend import rank_split

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MMGREC = '{"dim": 16, "layers": 1, "decoder_layers": 1}'
USERS = 20


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """mmgrec (tiny, one epoch) on the first 20 users of ml-100k, over an rqkmeans:2x16 index."""
    root = tmp_path_factory.mktemp("predict")
    assert main(["index", "build", "--dataset", "ml-100k", "--quantizer", "rqkmeans:2x16", "--out", str(root / "index")]) == 0  # fmt: skip
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(root / "index"), "--model", "mmgrec",
                 "--model-config", TINY_MMGREC, "--users", str(USERS), "--epochs", "1", "--batch-size", "16",
                 "--out", str(root / "run")]) == 0  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def predictor(run):
    return load_predictor(run)


def seen_by(user: str) -> set[str]:
    data = load_dataset("ml-100k")
    u = data.user_keys.index(user)
    return {
        data.item_keys[i] for i in data.interactions.items[data.interactions.users == u].tolist()
    }


def test_the_answers_table_shows_each_items_title_from_the_dataset(
    run, predictor, capsys, tmp_path
):
    user = predictor.user_keys[0]
    assert main(["predict", str(run), "--user", user, "--k", "3"]) == 0
    header, _, *rows = capsys.readouterr().out.splitlines()[1:]
    assert header.split()[-1] == "text" and len(rows) == 3
    data = load_dataset("ml-100k")
    title = dict(zip(data.item_keys, data.item_texts, strict=True))
    for row in rows:
        assert title[row.split()[1]][:30] in row
    out = tmp_path / "p.jsonl"
    assert (
        main(["predict", str(run), "--user", user, "--k", "3", "--texts", "--out", str(out)]) == 0
    )
    (answer,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert answer["texts"] == [title[k] for k in answer["keys"]]


def test_predict_user_writes_ranked_unseen_items(run, predictor, tmp_path):
    user = predictor.user_keys[0]
    assert (
        main(["predict", str(run), "--user", user, "--k", "5", "--out", str(tmp_path / "p.jsonl")])
        == 0
    )
    (answer,) = read_jsonl(tmp_path / "p.jsonl")
    assert set(answer) == {"input", "keys", "scores", "ids"} and answer["input"] == {"user": user}
    assert len(answer["keys"]) == len(answer["scores"]) == len(answer["ids"]) == 5
    ids = predictor.run.ids
    assert [list(ids.code_of(key)) for key in answer["keys"]] == answer["ids"]
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert not set(answer["keys"]) & seen_by(user)
    # `--out -` writes the same line to standard output, from a fresh process in another folder
    done = semid("predict", run, "--user", user, "--k", "5", "--out", "-", cwd=tmp_path)
    assert done.stdout == (tmp_path / "p.jsonl").read_text() and not (tmp_path / "-").exists()


def test_predict_at_the_test_target_is_the_evaluation_ranking(predictor):
    spec, task = predictor.spec, get_task("recommend")
    ranker = task.ranker(predictor.run, spec, EvalOptions())
    codes = predictor.run.ids.codes if is_generator(predictor.run.model) else None
    users, ranking, _, _ = rank_split(
        ranker, predictor.histories().data, "test", 10, codes, spec.max_history
    )
    answers = predictor.predict(
        [{"user": predictor.user_keys[u], "split": "test"} for u in users.tolist()], k=10
    )
    keys = predictor.run.ids.keys
    for i, answer in enumerate(answers):
        expected = [keys[r] for r in ranking.rows[i].tolist() if r >= 0]
        assert answer["keys"] == expected, answer["input"]


def test_a_users_json_line_keeps_its_split_and_id(run, predictor, tmp_path, capsys):
    """`--users FILE.jsonl` lines with "split": "test" are answered at the test target, as eval
    ranks them (the field was dropped, so each user was answered after the whole history, the
    target excluded as seen); a typo of a field is refused with its line."""
    users = predictor.user_keys[:3]
    lines = [json.dumps({"user": u, "split": "test", "id": f"q{i}"}) for i, u in enumerate(users)]
    (tmp_path / "u.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(run), "--users", str(tmp_path / "u.jsonl"), "--k", "10",
                 "--out", str(out)]) == 0  # fmt: skip
    expected = predictor.predict([{"user": u, "split": "test"} for u in users], k=10)
    answers = read_jsonl(out)
    assert [a["keys"] for a in answers] == [e["keys"] for e in expected]
    assert [a["input"] for a in answers] == [
        {"user": u, "split": "test", "id": f"q{i}"} for i, u in enumerate(users)
    ]
    (tmp_path / "typo.jsonl").write_text(f'{lines[0]}\n{{"user": "{users[1]}", "splt": "test"}}\n')
    capsys.readouterr()
    assert main(["predict", str(run), "--users", str(tmp_path / "typo.jsonl")]) == 2
    assert (
        "typo.jsonl line 2: unknown field 'splt' (did you mean 'split'?) in an input"
        in capsys.readouterr().err
    )


def test_a_history_longer_than_the_model_reads_excludes_all_its_items(predictor):
    """A new user's history past max_history: the model reads its last items, and every item of
    it counts as seen (only the last ones were excluded)."""
    keys = predictor.run.ids.keys
    limit = predictor.spec.max_history
    (top,) = predictor.predict([{"history": keys[:limit]}], k=5)
    older = [k for k in keys if k not in set(keys[:limit])][:10]
    mixed = top["keys"] + older  # the answers above, then enough items to push them past the limit
    mixed += [k for k in keys[:limit] if k not in set(mixed)][: limit - len(older)]
    assert len(mixed) > limit
    (answer,) = predictor.predict([{"history": mixed}], k=20)
    assert not set(answer["keys"]) & set(mixed)


def test_predict_history_and_all_users(run, predictor, tmp_path):
    history = ["1", "50", "181"]
    out = tmp_path / "h.jsonl"
    assert (
        main(["predict", str(run), "--history", ",".join(history), "--k", "5", "--out", str(out)])
        == 0
    )
    (answer,) = read_jsonl(out)
    assert len(answer["keys"]) == 5 and not set(answer["keys"]) & set(history)
    assert set(answer["keys"]) <= set(predictor.run.ids.keys)

    out = tmp_path / "all.jsonl"
    assert main(["predict", str(run), "--users", "all", "--k", "3", "--out", str(out)]) == 0
    answers = read_jsonl(out)
    assert [a["input"]["user"] for a in answers] == predictor.user_keys and len(answers) == USERS
    assert all(len(a["keys"]) == 3 for a in answers)


@pytest.mark.parametrize("texts", [[], ["--texts"]])
def test_a_user_with_texts_reads_the_registered_dataset_once(run, predictor, tmp_path, monkeypatch,
                                                              texts):  # fmt: skip
    """The user's history and the answers' texts come from one load of ml-100k."""
    import semid.tasks.items as items

    user, loads = predictor.user_keys[0], []
    monkeypatch.setattr(
        items, "load_dataset", lambda name: loads.append(name) or load_dataset(name)
    )
    out = ["--out", str(tmp_path / "p.jsonl")] if texts else []
    assert main(["predict", str(run), "--user", user, *texts, *out]) == 0
    assert loads == ["ml-100k"]


def test_texts_without_out_says_the_table_shows_them(run, predictor, capsys):
    user = predictor.user_keys[0]
    assert main(["predict", str(run), "--user", user, "--k", "2", "--texts"]) == 0
    assert (
        "--texts adds texts to --out's JSON lines; the table below shows them"
        in capsys.readouterr().err
    )


def test_answers_may_go_in_the_run_folder_but_not_over_its_parts(run, capsys):
    preds = run / "preds.jsonl"
    assert main(["predict", str(run), "--history", "1,50", "--out", str(preds)]) == 0
    assert len(read_jsonl(preds)) == 1
    preds.unlink()
    config = (run / "config.json").read_bytes()
    assert main(["predict", str(run), "--history", "1,50", "--out", str(run / "config.json")]) == 2
    assert "is part of the run" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == config


def test_histories_as_json_lists_and_files_answer_what_history_answers(run, tmp_path, capsys):
    """A history as a JSON list (keys may hold commas) and each line format of --histories give the
    answers of the comma-separated --history."""

    def predict(*flag: str) -> list[dict]:
        out = tmp_path / "p.jsonl"
        assert main(["predict", str(run), *flag, "--k", "4", "--out", str(out)]) == 0
        return read_jsonl(out)

    (by_commas,) = predict("--history", "1,50,181")
    assert predict("--history", '["1", "50", "181"]') == [by_commas]
    assert predict("--history", "[1, 50, 181]") == [by_commas]  # JSON numbers are keys too
    assert predict("--history", "1", "50", "181") == [by_commas]  # one key per argument
    lines = [
        "1,50,181",
        '["1", "50", "181"]',
        '{"history": ["1", "50", "181"]}',
        '{"history": "1,50,181"}',
        '["50"]',
    ]
    (tmp_path / "h.txt").write_text("\n".join(lines) + "\n\n")
    answers = predict("--histories", str(tmp_path / "h.txt"))
    assert answers[:4] == [by_commas] * 4
    (only_50,) = predict("--history", "50")
    assert answers[4] == only_50 and answers[4] != by_commas


def test_integer_item_keys_in_a_json_history_are_keys(predictor):
    """JSON clients (serve's "histories") may send numeric keys as numbers, as they may users."""
    assert predictor.check_input({"history": [1, 50]}) == {"history": ["1", "50"]}
    (as_numbers,) = predictor.predict([{"history": [1, 50]}], k=3)
    (as_strings,) = predictor.predict([{"history": ["1", "50"]}], k=3)
    assert as_numbers["input"] == {"history": [1, 50]}  # echoed as sent
    assert {**as_numbers, "input": None} == {**as_strings, "input": None}
    with pytest.raises(SemidError, match=r'"history"\[0\] must be an item key .*, got true'):
        predictor.check_input({"history": [True]})
    with pytest.raises(SemidError, match=r'"history"\[1\] must be an item key .*, got \{"a": 1\}'):
        predictor.check_input({"history": ["50", {"a": 1}]})


def test_beams_past_the_catalogue_search_as_the_catalogue_size(predictor, monkeypatch):
    """A beam per ID already searches every ID, so a wider beam (a client may send any integer)
    is searched as that: the same answers, without overflowing torch's sizes or allocating a beam
    (and a cached ranker) per requested width."""
    inputs = [{"user": predictor.user_keys[0]}, {"history": ["1", "50"]}]
    size = len(predictor.run.ids)
    whole = predictor.predict(inputs, k=5, num_beams=size)
    widths = []
    rank = predictor.rank_with_notes
    monkeypatch.setattr(
        predictor, "rank_with_notes", lambda x, k, b: widths.append(b) or rank(x, k, b)
    )
    assert predictor.predict(inputs, k=5, num_beams=10**30) == whole
    assert predictor.predict(inputs, k=5, num_beams=size + 1) == whole
    assert widths == [size, size]


@pytest.fixture(scope="module")
def tiger_run(run) -> Path:
    """A tiny TIGER with user tokens (one epoch), on the index and users of ``run``."""
    tiger = '{"max_items": 4, "user_buckets": 5, "d_model": 16, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 1}'
    out = run.parent / "tiger"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(run.parent / "index"), "--model",
                 "tiger", "--model-config", tiger, "--users", str(USERS), "--epochs", "1", "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.mark.parametrize("model", ["mmgrec", "tiger"])
def test_a_copy_answers_resolved_users_without_reading_the_data(model, request, monkeypatch):
    """What `semid serve` does with model processes: the server's copy resolves each user to their
    events (with TIGER, the user's token too), and another copy of the run answers them as the
    first answers the users, without reading the data files; an item the other copy's index lacks
    is refused in one line."""
    run = request.getfixturevalue({"mmgrec": "run", "tiger": "tiger_run"}[model])
    predictor = load_predictor(run)
    users = predictor.user_keys
    inputs = [{"user": users[0]}, {"user": users[1], "split": "test"}, {"history": ["1", "50"]}]
    expected = predictor.predict(inputs, k=5)
    resolved = predictor.resolve([predictor.check_input(x) for x in inputs])
    assert resolved[2] == inputs[2] and "events" in resolved[0] and "events" in resolved[1]
    copy = load_predictor(run)
    monkeypatch.setattr(copy, "histories", lambda: pytest.fail("the copy read the data files"))
    answers = copy.predict_resolved(resolved, k=5)
    assert [(a["keys"], a["scores"]) for a in answers] == [
        (e["keys"], e["scores"]) for e in expected
    ]
    # a history longer than this copy reads (another copy trained with a longer one) is cut
    full = next(x for x in predictor.resolve([{"user": u} for u in users])
                if len(x["events"]["items"]) == predictor.spec.max_history)  # fmt: skip
    events = full["events"]
    longer = {**full, "events": {**events, "items": events["items"][:3] + events["items"],
                                 "times": events["times"][:3] + events["times"]}}  # fmt: skip
    (answer,) = predictor.predict([{"user": full["user"]}], k=5)
    assert copy.predict_resolved([longer], k=5)[0]["scores"] == answer["scores"]
    resolved[0]["events"]["seen"].append("no-such-item")
    with pytest.raises(SemidError, match="'no-such-item' of user .* not in this copy of the run's"):
        copy.predict_resolved(resolved, k=5)


def test_info_names_the_run_by_its_absolute_path(run, monkeypatch):
    """/info's "run" is read by clients in other folders: a run loaded by a relative path is
    named by its absolute one."""
    monkeypatch.chdir(run.parent)
    assert load_predictor(run.name).info()["run"] == str(run.absolute())
    (run.parent / "elsewhere").mkdir(exist_ok=True)
    monkeypatch.chdir(run.parent / "elsewhere")  # ../run: named without the ".."
    assert load_predictor(f"../{run.name}").info()["run"] == str(run.absolute())


def test_a_query_to_a_recommender_is_told_what_to_send(predictor):
    """serve's {"queries": [...]} to a recommendation run names the bodies that it answers, as
    /info does."""
    assert predictor.info()["inputs"] == ["users", "histories", "inputs"]
    for item in ({"query": "a good film"}, {"user": predictor.user_keys[0], "query": "x"}):
        with pytest.raises(SemidError, match='recommends items for users and histories, not for '
                                             'a query; send {"users": '):  # fmt: skip
            predictor.check_input(item)


def test_inputs_come_as_a_list_or_any_iterable_of_inputs(predictor):
    """A generator of inputs is answered as its list (it failed inside zip); a lone input is told
    to be wrapped in a list."""
    users = predictor.user_keys[:2]
    listed = predictor.predict([{"user": u} for u in users], k=3)
    assert predictor.predict(({"user": u} for u in users), k=3) == listed
    with pytest.raises(SemidError, match=r"inputs must be a list of inputs, got dict; e\.g\. "):
        predictor.predict({"user": users[0]}, k=3)


@pytest.mark.parametrize(("k", "num_beams"), [("3", None), (3.0, None), (True, None), (3, 20.0)])
def test_k_and_beams_that_are_not_whole_numbers_are_refused(predictor, k, num_beams):
    """The Python API checks k and num_beams as serve's bodies are checked (a string or a float
    k failed deep inside the ranking; k=True answered one item)."""
    user = predictor.user_keys[0]
    with pytest.raises(SemidError, match=r"(k|num_beams) must be a whole number, got "):
        predictor.predict([{"user": user}], k=k, num_beams=num_beams)
    assert len(predictor.predict([{"user": user}], k=np.int64(3))[0]["keys"]) == 3


def test_a_split_goes_with_a_user_and_is_refused_on_a_history(predictor):
    user = predictor.user_keys[0]
    assert predictor.check_input({"user": user, "split": "test"}) == {"user": user, "split": "test"}
    with pytest.raises(SemidError, match='"split" goes with a "user".*drop "split"'):
        predictor.check_input({"history": ["50"], "split": "valid"})  # was dropped without a word


def test_ids_with_spaces_around_them_name_the_users_and_items_of_the_data(predictor):
    """Data files are read without the spaces around an id; `--user " 196 "` and a JSON history
    were refused as unknown ids (a typed or pasted id)."""
    user = predictor.user_keys[0]
    assert predictor.check_input({"user": f" {user} ", "split": "test"}) == {
        "user": user,
        "split": "test",
    }
    assert predictor.check_input({"history": [" 50 ", "1"]}) == {"history": ["50", "1"]}
    answers = predictor.predict([{"user": f"  {user}"}, {"user": user}], k=5)
    assert answers[0]["keys"] == answers[1]["keys"]
    with pytest.raises(SemidError, match="unknown user ' nobody '"):  # as given, when unknown
        predictor.check_input({"user": " nobody "})


def test_a_history_that_names_an_item_by_its_title_is_shown_its_key(predictor):
    with pytest.raises(SemidError, match=r"^unknown item 'toy story' in the history: a history lists "
                                         r"item keys, and 'toy story' begins the text of item '1' "
                                         r"\(.Toy Story \(1995\)"):  # fmt: skip
        predictor.check_input({"history": ["50", "toy story"]})
    with pytest.raises(SemidError, match="such as '1'$"):  # no title begins so: an example key
        predictor.check_input({"history": ["no such film"]})


def test_a_key_cut_at_its_comma_gets_the_json_hint(run, capsys):
    assert main(["predict", str(run), "--history", "1,Sixth Sense, The (1999)"]) == 2
    err = capsys.readouterr().err
    assert "unknown item 'Sixth Sense'" in err and "JSON list" in err
    assert main(["predict", str(run), "--history", '["1", "Sixth Sense, The (1999)"]']) == 2
    err = capsys.readouterr().err
    assert "unknown item 'Sixth Sense, The (1999)'" in err and "JSON list" not in err
    assert main(["predict", str(run), "--history", "1", "Sixth Sense, The (1999)"]) == 2
    err = capsys.readouterr().err  # one key per argument: no key was cut at a comma
    assert "unknown item 'Sixth Sense, The (1999)'" in err and "JSON list" not in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"semid serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"semid serve did not answer /health within {seconds} s")


@contextmanager
def served(run: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`semid serve RUN` on CPU and a free port, in a fresh process started from the run's parent
    folder, once it answers: (process, URL). Killed on the way out if still running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*command(), "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", *flags], cwd=run.parent, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until_up(proc, url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.slow
def test_serve_answers_what_predict_answers(run, predictor):
    with served(run) as (proc, url):
        users = predictor.user_keys[:4]
        got = httpx.post(f"{url}/predict", json={"users": users, "k": 5}, timeout=60)
        assert got.status_code == 200
        assert got.json()["results"] == predictor.predict([{"user": u} for u in users], k=5)
        histories = [["1", "50"], ["181"]]
        got = httpx.post(
            f"{url}/predict", json={"histories": histories, "k": 3, "num_beams": 20}, timeout=60
        )
        assert got.json()["results"] == predictor.predict(
            [{"history": h} for h in histories], k=3, num_beams=20
        )
        # "texts": true adds each answer's item texts (ml-100k's titles)
        got = httpx.post(
            f"{url}/predict", json={"users": users[:2], "k": 3, "texts": True}, timeout=60
        )
        expected = predictor.predict([{"user": u} for u in users[:2]], k=3)
        assert [
            {k: v for k, v in r.items() if k != "texts"} for r in got.json()["results"]
        ] == expected
        for result in got.json()["results"]:
            assert result["texts"] == predictor.item_texts(result["keys"])
            assert all("Genres: " in t for t in result["texts"])  # a title and its genres

        for body in (
            {"users": ["no-such-user"]},
            {"users": predictor.user_keys[:1], "k": len(predictor.run.ids) + 1},
            {"users": predictor.user_keys[:1], "texts": "yes"},
        ):
            bad = httpx.post(f"{url}/predict", json=body, timeout=30)
            assert 400 <= bad.status_code < 500 and "error" in bad.json(), body
        assert (
            "no-such-user"
            in httpx.post(f"{url}/predict", json={"users": ["no-such-user"]}, timeout=30).json()[
                "error"
            ]
        )
        bad = httpx.post(
            f"{url}/predict",
            content=b'{"users": [',
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert 400 <= bad.status_code < 500 and "error" in bad.json()
        assert httpx.get(f"{url}/info", timeout=30).json()["task"] == "recommend"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def pop_run(folder: Path) -> Path:
    """A most-popular run trained on `write_interactions`' files in ``folder``."""
    write_interactions(folder)
    data = ["--dataset", str(folder / "interactions.csv"), "--items", str(folder / "items.csv")]
    assert main(["index", "build", *data, "--out", str(folder / "index")]) == 0
    assert main(["train", "recommender", *data, "--index", str(folder / "index"), "--model",
                 "pop", "--out", str(folder / "run")]) == 0  # fmt: skip
    return folder / "run"


def test_a_scorers_info_shows_no_beams_and_pop_answers_its_counts(tmp_path):
    """A scorer ranks every item: /info shows no beams for it (it showed 20, which it ignores).
    Most-popular's scores are its counts (147.999954 stood for 148: its tie-break showed), and
    its ties still go to the lower row."""
    predictor = load_predictor(pop_run(tmp_path))
    assert predictor.info()["num_beams"] is None
    (answer,) = predictor.predict([{"history": ["m1"]}], k=5)
    assert answer["scores"] and all(float(s).is_integer() for s in answer["scores"])
    rows = predictor.run.ids.rows_of_keys(answer["keys"]).tolist()
    ranked = list(zip([-s for s in answer["scores"]], rows, strict=True))
    assert ranked == sorted(ranked)  # by count, then by row


def test_serves_model_processes_load_a_change_without_repeating_the_note(tmp_path, capsys):
    """The server's own copy says that the run changed and was loaded again, or did not load; each
    model process (``announce=False``) loads it too, silently, instead of a line per process."""
    run = pop_run(tmp_path)
    loud, quiet = (
        ReloadingPredictor(lambda: load_predictor(run), run, announce) for announce in (True, False)
    )
    time.sleep(0.05)  # folder times tick every few ms
    (run / "index" / "touched").write_text("x")
    capsys.readouterr()
    quiet.info()
    assert "loaded it again" not in capsys.readouterr().err
    loud.info()
    assert "loaded it again" in capsys.readouterr().err
    time.sleep(0.05)
    (run / "config.json").write_text("{")  # a damaged change: each copy keeps the one it has
    quiet.info()
    assert "did not load" not in capsys.readouterr().err
    loud.info()
    assert "did not load" in capsys.readouterr().err


def test_a_served_recommender_reads_its_data_before_the_first_request(tmp_path, capsys):
    """serve reads the interactions at start (a large log is not read by the first request); a log
    that cannot be read is noted, not fatal: histories are still answered."""
    predictor = ReloadingPredictor(lambda: load_predictor(tmp_path / "run"), pop_run(tmp_path))
    predictor.read_data()
    assert predictor.current()._loaded is not None
    (tmp_path / "interactions.csv").write_text("user\tthing\nu1\n")
    capsys.readouterr()
    predictor.read_data()
    err = capsys.readouterr().err
    assert err.startswith("semid: note: ") and "users are refused; histories are answered" in err
    assert predictor.predict([{"history": ["m1"]}], k=3)[0]["keys"]
    with pytest.raises(RunDataError):  # serve answers it 503: the run's files, not the request
        predictor.predict([{"user": "u1"}], k=3)


@pytest.mark.slow
def test_only_the_server_reads_a_grown_log_for_its_model_processes(tmp_path):
    """With two model processes, users are resolved from the data by the server's copy alone: a
    log that grew since training gets its note once, not once per process, and its new user is
    answered as predict answers it."""
    run = pop_run(tmp_path)
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m3,3000000\nu99,m3,3000001\nu99,m4,3000002\n")
    with served(run, "--workers", "2") as (proc, url):
        users = [{"user": "u1"}, {"user": "u99"}]
        for _ in range(4):  # enough requests for both model processes to answer some
            got = httpx.post(f"{url}/predict", json={"inputs": users, "k": 5}, timeout=60)
            assert got.status_code == 200, got.text
        assert got.json()["results"] == load_predictor(run).predict(users, k=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read().count("its data changed since training") == 1


def test_a_served_run_follows_index_add(run, tmp_path, capsys):
    """serve's predictor loads the run again once `semid index add` changed it (not before, and
    not while a writer holds the run), so an added item is answered without a restart."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    loads = []

    def load():
        loads.append(1)
        return load_predictor(copy)

    served = ReloadingPredictor(load, copy)
    size = served.info()["index_size"]
    with pytest.raises(SemidError, match="unknown item 'new-item'"):
        served.check_input({"history": ["new-item"]})
    assert len(loads) == 1  # unchanged: no reload
    (tmp_path / "new.csv").write_text("item,title\nnew-item,A brand new movie (2026)\n")
    with write_lock(copy, "a test writer"):
        assert main(["index", "add", str(copy), "--items", str(tmp_path / "new.csv")]) == 0
        assert served.info()["index_size"] == size and len(loads) == 1  # mid-write: the old copy
    assert served.info()["index_size"] == size + 1
    assert served.check_input({"history": ["new-item"]}) == {"history": ["new-item"]}
    assert served.predict([{"history": ["new-item"]}], k=3)[0]["keys"]
    assert served.item_texts(["new-item"]) == ["title: A brand new movie (2026)"]
    assert len(loads) == 2 and "loaded it again (1,683 indexed)" in capsys.readouterr().err
    config = (copy / "config.json").read_text()
    time.sleep(0.05)  # folder times tick every few ms: each change gets its own
    (copy / "broken.json").write_text("{")
    (copy / "broken.json").replace(copy / "config.json")  # a change that does not load
    assert served.info()["index_size"] == size + 1 and served.info()  # the copy loaded before
    assert len(loads) == 3 and "did not load" in capsys.readouterr().err  # tried once
    assert served.info()["stale"].startswith(f"{copy} changed but did not load (")  # /info says
    assert served.info()["stale"].endswith("answers come from the copy loaded before")
    time.sleep(0.05)
    (copy / "fixed.json").write_text(config)
    (copy / "fixed.json").replace(copy / "config.json")
    assert served.info()["index_size"] == size + 1 and len(loads) == 4
    assert "stale" not in served.info()


def test_a_model_process_answers_from_the_run_the_servers_copy_accepted(tmp_path):
    """Two `index add`s back to back while serving: the server's copy loaded the first (its checks
    accept the added item), the model process got no batch before the second took the run's lock,
    and still answers from the run the server's copy read (it refused the item as unknown)."""
    run = pop_run(tmp_path)
    local, behind = follow_run(load_predictor, run), follow_run(load_predictor, run)
    first, size = behind.stamp, behind.info()["index_size"]
    [model] = ProcessPredictor.launch(
        local, partial(follow_run, load_predictor, run, announce=False), threads=1
    )
    try:
        (tmp_path / "new.csv").write_text("item,title\nnew-item,A brand new movie (2026)\n")
        assert main(["index", "add", str(run), "--items", str(tmp_path / "new.csv")]) == 0
        assert local.check_input({"history": ["new-item"]})  # the server's copy loaded the add
        with write_lock(run, "the next index add"):  # nothing written yet
            [answer] = model.predict([{"history": ["new-item"]}], k=3)
        assert answer["input"] == {"history": ["new-item"]} and len(answer["keys"]) == 3
        with write_lock(run, "the next index add"):
            time.sleep(0.05)  # folder times tick every few ms
            (run / "index" / "touched").write_text("x")  # the writer began to write
            behind.catch_up(local.stamp)  # the folder moved past that state: it cannot be had
            assert behind.stamp == first and behind.info()["index_size"] == size
    finally:
        model.close()


def test_a_changed_run_is_loaded_once_by_one_thread_while_the_others_wait(tmp_path):
    """The server's threads (the event loop's input checks, the batchers, /info) all see a change:
    one loads the run again, the others wait for that copy instead of loading their own."""
    for part in ("index", "model"):
        (tmp_path / "run" / part).mkdir(parents=True)
    loads, loading = [], threading.Event()

    def load():
        loads.append(SimpleNamespace(info=lambda: {"index_size": 1}))
        if len(loads) > 1:
            loading.set()
            time.sleep(0.3)  # a load takes a while: the other threads arrive meanwhile
        return loads[-1]

    served = ReloadingPredictor(load, tmp_path / "run")
    time.sleep(0.05)  # folder times tick every few ms: the change gets its own
    (tmp_path / "run" / "index" / "codes").write_text("new")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: served.current(), range(4)))
    assert len(loads) == 2 and got == [loads[1]] * 4 and loading.is_set()


def test_a_grown_log_is_read_once_however_many_threads_check_users(tmp_path, monkeypatch):
    """The server checks requests on several threads: after the log grows, one reads it again and
    the others wait for its histories instead of each reading the whole log."""
    predictor = load_predictor(pop_run(tmp_path))
    predictor.read_data()
    reads, read = [], predictor._read_histories

    def slow_read():
        reads.append(1)
        time.sleep(0.3)  # a large log takes a while: the other threads arrive meanwhile
        return read()

    monkeypatch.setattr(predictor, "_read_histories", slow_read)
    time.sleep(0.05)  # file times tick every few ms: the change gets its own
    with open(tmp_path / "interactions.csv", "a") as f:
        f.write("u1,m3,3000000\n")
    with ThreadPoolExecutor(4) as pool:
        checked = list(pool.map(lambda _: predictor.check_input({"user": "u1"}), range(4)))
    assert checked == [{"user": "u1"}] * 4 and len(reads) == 1


def test_an_unknown_field_in_an_input_is_refused(predictor):
    """A typo in an input ("splt") is named, not ignored (the answer would silently be another)."""
    user = predictor.user_keys[0]
    with pytest.raises(
        SemidError,
        match=r"unknown field 'splt' \(did you mean 'split'\?\) in an input; an input holds \"user\"",
    ):
        predictor.check_input({"user": user, "splt": "test"})
    assert predictor.check_input({"user": user, "split": "test"}) == {"user": user, "split": "test"}


def test_a_repeated_user_flag_asks_for_each_user(run, predictor, tmp_path):
    """`--user A --user B` answered only B (argparse kept the last); now both, in order."""
    first, second = predictor.user_keys[:2]
    out = tmp_path / "two.jsonl"
    assert main(["predict", str(run), "--user", first, "--user", second, "--k", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    assert [a["input"] for a in read_jsonl(out)] == [{"user": first}, {"user": second}]


def test_a_recommend_predictor_samples_users_of_its_data(predictor):
    """`benchmarks.serve RUN` without --inputs refused every real run (only the fake predictor
    had sample inputs); a recommendation run now draws users of its data, the same for a seed."""
    inputs = predictor.sample_inputs(30, seed=0)
    users = set(predictor.histories().answerable())
    assert len(inputs) == 30 and all(set(i) == {"user"} and i["user"] in users for i in inputs)
    assert inputs == predictor.sample_inputs(30, seed=0) != predictor.sample_inputs(30, seed=1)
    assert len(predictor.predict(inputs[:2], 5, None)) == 2


@pytest.mark.parametrize("value", [None, True, 259.0, ["259"], {"a": 1}])
def test_a_user_that_is_no_key_is_refused_not_read_as_text(predictor, value):
    """Over HTTP an input's "user" of null or true was read as the text "None" or "True", which
    answered a user of that name; a list became "['259']"."""
    with pytest.raises(
        SemidError, match=r'^"user" must be a user key \(a string or an integer\), got '
    ):
        predictor.check_input({"user": value})


def test_an_unknown_key_is_echoed_cut_short(predictor):
    """An unknown 10 MB user id came back whole in the error (a 10 MB body)."""
    with pytest.raises(SemidError) as caught:
        predictor.check_input({"user": "x" * 1_000_000})
    assert len(str(caught.value)) < 400 and "'xxxxxxxxxx" in str(caught.value)
    with pytest.raises(SemidError) as caught:
        predictor.check_input({"history": ["y" * 1_000_000]})
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("value", [5, True, ["a"]])
def test_a_query_that_is_no_text_is_named_as_such(value):
    """`{"query": 5}` was told "each input needs a non-empty query text": it is not empty."""
    from semid.tasks.base import query_input

    with pytest.raises(SemidError, match=r'^"query" must be a text \(a JSON string\), got '):
        query_input({"query": value})
    with pytest.raises(SemidError, match='needs a non-empty "query" text'):
        query_input({"query": "  "})


def test_serve_stopped_while_it_loads_exits_0(run, monkeypatch, capsys):
    """A supervisor's SIGTERM while the server still loaded its run ended in exit 143 and a line
    about training's artifacts; a server stopped while serving exits 0."""
    import semid.reloading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(semid.reloading, "follow_run", interrupted)
    assert main(["serve", str(run), "--port", "0"]) == 0
    assert capsys.readouterr().err.strip().endswith("semid serve: stopped before it served")
