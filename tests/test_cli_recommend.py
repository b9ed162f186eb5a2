import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from _semid_cli import ENV
from conftest import random_ml100k_index

import semid.quantizers  # noqa: F401  (registers rqkmeans)
from semid.atomic import DiskFullError
from semid.cli.main import main
from semid.errors import SemidError
from semid.ids import SemanticIDs, load_quantizer
from semid.indexing import add_items
from semid.models import build_model, save_model
from semid.quantization import build_quantizer
from semid.runs import copy_index, load_run, write_run
from semid.tasks import get_task
from semid.tasks.recommend import RecommendSpec
from semid.trie import PrefixTrie

TINY_MMGREC = {"dim": 16, "heads": 2, "layers": 1, "ff_mult": 1}


def tiny_run(path, extra_codes=8, n=30):
    """A run directory with a fitted rqkmeans:2x4 index over n random items and an untrained mmgrec."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    q = build_quantizer("rqkmeans:2x4").fit(x, seed=0)
    ids = SemanticIDs.from_codes(
        [f"i{j}" for j in range(n)], q.encode(x), q.codebook_sizes, "extra-level"
    )
    ids.save(path / "index", quantizer=q)
    sizes = list(ids.codebook_sizes)
    sizes[-1] += extra_codes
    torch.manual_seed(0)
    model = build_model("mmgrec", {**TINY_MMGREC, "codebook_sizes": sizes})
    save_model(model, path / "model")
    spec = RecommendSpec(dataset="none", model="mmgrec", model_config=model.config, max_history=50)
    write_run(path, "recommend", spec, {"trained_items": n})
    return ids, model


def test_index_add_makes_a_new_item_reachable_at_once(tmp_path):
    ids, model = tiny_run(tmp_path)
    x_new = torch.randn(1, 8, generator=torch.Generator().manual_seed(9))
    _, code = add_items(tmp_path / "index", ["new"], x_new, model)
    run = load_run(tmp_path)  # the grown index still fits the model
    assert run.ids.code_of("new") == tuple(code[0].tolist()) and len(run.ids) == len(ids) + 1
    trie = PrefixTrie.from_codes(run.ids.codes, model.codebook_sizes)
    batch = {
        "history_codes": run.ids.codes[:3][None],
        "times": torch.zeros(1, 3, dtype=torch.long),
        "users": torch.zeros(1, dtype=torch.long),
    }
    got, _ = model.generate(batch, trie, num_beams=len(run.ids))
    assert (got[0] == code).all(1).any()  # beam search over the whole index finds the new item
    with pytest.raises(SemidError, match="already indexed"):
        add_items(tmp_path / "index", ["new"], x_new, model)


def test_an_add_with_nothing_new_gives_no_codes_in_the_shape_of_some(tmp_path):
    ids, _ = tiny_run(tmp_path)
    np.save(tmp_path / "old.npy", torch.randn(1, 8).numpy())
    (tmp_path / "old.txt").write_text(ids.keys[0] + "\n")
    summary = get_task("recommend").add(tmp_path, tmp_path / "old.npy", keys=tmp_path / "old.txt",
                                        skip_indexed=True)  # fmt: skip
    assert summary["added"] == 0 and summary["codes"].shape == (0, ids.levels)


def test_new_items_already_indexed_are_refused_before_any_text_is_embedded(tmp_path, monkeypatch):
    import semid.tasks.items as items

    ids = SemanticIDs(["a", "b"], torch.tensor([[0, 0], [1, 0]]), [2, 2])
    (tmp_path / "new.csv").write_text("item,text\nc,a new film\nb,an old film\n")
    monkeypatch.setattr(items, "TextEncoder", None)  # embedding would fail with a TypeError
    with pytest.raises(
        SemidError,
        match=r"1 of the 2 items of .* is already indexed \(e.g. 'b'\); pass --skip-indexed to add "
        "only the 1 new one, or give new keys",
    ):
        items.read_new_items(tmp_path / "new.csv", None, None, indexed=ids)


def test_skip_indexed_leaves_out_indexed_items_before_their_texts_are_embedded(
    tmp_path, monkeypatch
):
    import semid.tasks.items as items

    ids = SemanticIDs(["a", "b"], torch.tensor([[0, 0], [1, 0]]), [2, 2])
    (tmp_path / "new.csv").write_text("item,text\nc,a new film\nb,an old film\n")
    embedded = []

    class Recorder:
        def __init__(self, **kwargs):
            pass

        def encode(self, texts):
            embedded.extend(texts)
            return torch.zeros(len(texts), 4)

    monkeypatch.setattr(items, "TextEncoder", Recorder)
    keys, x, texts = items.read_new_items(
        tmp_path / "new.csv", None, None, indexed=ids, skip_indexed=True
    )
    assert keys == ["c"] and x.shape == (1, 4) and embedded == texts == ["a new film"]
    (tmp_path / "old.csv").write_text("item,text\nb,an old film\n")
    keys, _, _ = items.read_new_items(
        tmp_path / "old.csv", None, None, indexed=ids, skip_indexed=True
    )
    assert keys == [] and embedded == ["a new film"]  # nothing new: nothing embedded


def test_a_run_given_its_whole_updated_catalogue_with_skip_indexed_adds_the_new_items(
    tmp_path, capsys
):
    ids, _ = tiny_run(tmp_path / "run")
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "all.npy", x.numpy())
    # every indexed key, one written with spaces around it (keys files are read as tables are)
    keys = [" i0 ", *ids.keys[1:], "new-a", "new-b"]
    (tmp_path / "all.txt").write_text("\n".join(keys) + "\n")
    add = ["index", "add", str(tmp_path / "run"), "--items", str(tmp_path / "all.npy"), "--keys",
           str(tmp_path / "all.txt"), "--skip-indexed"]  # fmt: skip
    assert main(add) == 0
    said = capsys.readouterr().out
    assert "left out 30 items of" in said and "added 2 items to" in said
    grown = load_run(tmp_path / "run").ids
    assert grown.keys == [*ids.keys, "new-a", "new-b"]
    assert main(add) == 0  # again: nothing is new, nothing is written
    assert "nothing to add: every item of" in capsys.readouterr().out
    assert load_run(tmp_path / "run").ids.keys == grown.keys


def test_index_add_refuses_ids_the_model_cannot_write(tmp_path):
    ids, model = tiny_run(tmp_path, extra_codes=0)
    # items identical to an existing one need a new disambiguation token beyond the model's vocabulary
    q = load_quantizer(tmp_path / "index")
    group = ids.raw_codes[0]
    twins = int((ids.raw_codes == group).all(1).sum())
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))[:1].repeat(
        ids.codebook_sizes[-1] - twins + 1, 1
    )
    assert (q.encode(x) == group).all()
    with pytest.raises(
        SemidError,
        match=r"adding these \d+ items needs \d+ codes at level 2 but the model of .* knows \d+ \(nothing was added\)",
    ):
        add_items(tmp_path / "index", [f"t{j}" for j in range(len(x))], x, model)
    assert len(SemanticIDs.load(tmp_path / "index")) == len(ids)  # nothing written


def test_run_mismatch_errors(tmp_path):
    tiny_run(tmp_path)
    other = build_model("mmgrec", {**TINY_MMGREC, "codebook_sizes": [4, 4, 4, 4]})
    save_model(other, tmp_path / "model")
    with pytest.raises(SemidError, match="4-level IDs but its index has 3 levels"):
        load_run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["semid_version"] = "99.0.0"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SemidError, match="newer than this"):
        load_run(tmp_path)
    with pytest.raises(SemidError, match="nothing not found; check the path"):
        load_run(tmp_path / "nothing")
    (tmp_path / "file").write_text("")
    with pytest.raises(SemidError, match="file is not a folder"):
        load_run(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemidError, match="not a run directory"):
        load_run(tmp_path / "empty")


def test_train_notes_the_flags_a_model_does_not_use(tmp_path, capsys):
    # no index there: each command stops after its notes, which come before any work
    base = ["train", "recommender", "--dataset", "ml-100k", "--index", str(tmp_path / "none"),
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*base, "--model", "pop", "--lr", "0.1", "--epochs", "3", "--num-beams", "30"]) == 2
    err = capsys.readouterr().err
    assert "note: pop is fitted by counting, not trained; --epochs, --lr have no effect" in err
    assert "note: pop scores every item, without beam search; --num-beams has no effect" in err
    assert main([*base, "--model", "sasrec", "--lr", "0.1", "--num-beams", "30"]) == 2
    assert "note: sasrec scores every item, without beam search; --num-beams has no effect" in (
        capsys.readouterr().err
    )
    assert main([*base, "--model", "mmgrec", "--lr", "0.1", "--num-beams", "30"]) == 2
    assert "note:" not in capsys.readouterr().err  # a generator uses both


@pytest.mark.parametrize(
    "model, told",
    [
        ("avg", "--model avg is a text-to-image model: train it with `semid train retriever --model avg`"),
        ("promptdsi", "--model promptdsi is a document retriever: train it with `semid train retriever"),
        ("bogus", "unknown --model 'bogus'"),
    ],
)  # fmt: skip
def test_a_model_of_another_task_is_refused_before_any_work(tmp_path, capsys, model, told):
    """avg and promptdsi are registered models, so they passed the check and crashed in their
    forward (a KeyError traceback) after the run folder was made."""
    _, _, idx = random_ml100k_index(tmp_path)
    capsys.readouterr()  # the index build's notes
    out = tmp_path / "run"
    args = ["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model", model,
            "--out", str(out), "--max-steps", "1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert told in err and "one of mmgrec, pop, sasrec, tiger" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, told",
    [
        (
            [],
            "run the same command again to resume (it wrote no checkpoint yet, so it starts over)",
        ),
        (
            ["--no-resume"],
            "run it again without --no-resume to resume from the last checkpoint it wrote",
        ),
        # --resume spells out the default (it was refused as an unknown argument); with
        # --no-resume it is refused (test_bad_inputs), as which was meant cannot be told
        (["--resume"], "run the same command again to resume (it wrote no"),
    ],
)
def test_ctrl_c_in_training_says_how_to_resume(tmp_path, capsys, monkeypatch, extra, told):
    import semid.cli.train_recommender as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run", interrupted)
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(tmp_path),
                 "--model", "pop", "--out", str(tmp_path / "run"), *extra]) == 130  # fmt: skip
    assert told in capsys.readouterr().err


def test_a_finished_command_ends_with_its_own_code_on_a_late_ctrl_c(tmp_path):
    """Ctrl-C in the last moment of an add that had finished (during the interpreter's exit) made
    the exit code 130 after "added 800 items", and the same command then refused every item. A
    late signal now ends the process at once with the command's code (a hang can still be
    stopped). In a fresh process: a command returns, then its exit is held up and signalled."""
    script = """
import os, signal, sys, threading, time
import semid.cli.train_recommender as command
from semid.cli.main import main
command.run = lambda args: 3  # a finished command, with its exit code
sys.argv = ["semid", "train", "recommender", "--dataset", "ml-100k", "--index", ".", "--model",
            "pop", "--out", "run"]
code = main()
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
time.sleep(30)  # the interpreter's exit, held up
print("not ended by the signal")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "not ended" not in done.stdout


def test_ctrl_c_in_training_names_the_step_it_resumes_from(tmp_path, capsys, monkeypatch):
    """The steps after the last checkpoint are trained again: the line says from which step."""
    import semid.cli.train_recommender as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run", interrupted)
    checkpoints = tmp_path / "run" / "train" / "checkpoints"
    for step, whole in ((1000, True), (1166, True), (2000, False)):  # 2000: cut short, no state
        (checkpoints / f"step-{step:08d}").mkdir(parents=True)
        if whole:
            (checkpoints / f"step-{step:08d}" / "trainer_state.json").write_text("{}")
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(tmp_path),
                 "--model", "pop", "--out", str(tmp_path / "run")]) == 130  # fmt: skip
    err = capsys.readouterr().err
    assert err.endswith("run the same command again to resume from its last checkpoint, at step "
                        "1,166\n")  # fmt: skip


@pytest.mark.parametrize("read_only", ["both", "run"])  # the run and its folder, or the run alone
def test_a_read_only_run_is_evaluated_without_saving_and_refuses_an_add(
    tmp_path, capsys, monkeypatch, read_only
):
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    assert not (run / "metrics.json").exists()  # pop is not validated in training
    import semid.locking

    real_access = os.access
    unwritable = {str(run)} | ({str(run.parent)} if read_only == "both" else set())
    monkeypatch.setattr(semid.locking.os, "access",
                        lambda p, mode: str(p) not in unwritable and real_access(p, mode))  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--split", "valid"]) == 0
    out = capsys.readouterr()
    assert (
        "recall@10" in out.out and "is read-only here, so these figures were not saved" in out.err
    )
    assert not (run / "metrics.json").exists()
    (tmp_path / "one.tsv").write_text("one\tA film\n")
    assert main(["index", "add", str(run), "--items", str(tmp_path / "one.tsv")]) == 2
    assert f"cannot write run {run}: " in capsys.readouterr().err


def test_eval_on_a_full_disk_prints_its_figures_and_exits_2(tmp_path, capsys, monkeypatch):
    """A save that should have worked and did not is an error (exit 2) after the table: with exit
    0, a script reading metrics.json next read the earlier figures as these."""
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    import semid.runs

    def full(*args, **kwargs):
        raise DiskFullError(run / "metrics.json")

    monkeypatch.setattr(semid.runs, "update_metrics", full)
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--split", "valid"]) == 2
    out = capsys.readouterr()
    assert "recall@10" in out.out and "saved to" not in out.out
    assert (
        f"no space left on device for {run / 'metrics.json'}, so the figures above were not saved"
        in out.err
    )


def test_a_run_whose_config_is_lost_is_replaced_by_a_retrain_without_resume(tmp_path, capsys):
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    train = ["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model", "pop",
             "--out", str(run)]  # fmt: skip
    assert main(train) == 0
    (run / "config.json").unlink()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert "config.json is missing; retrain the run (`semid train ... --no-resume`" in (
        capsys.readouterr().err
    )
    assert main(train) == 2  # resuming needs the config it lost
    assert main([*train, "--no-resume"]) == 0
    assert main(["eval", str(run), "--k", "10"]) == 0


@pytest.mark.slow
def test_cli_end_to_end_on_a_slice_of_ml100k(tmp_path, capsys):
    keys, x, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    tiger = {"max_items": 5, "d_model": 16, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 1}
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model", "tiger",
                 "--users", "6", "--epochs", "1", "--batch-size", "64", "--num-beams", "10",
                 "--eval-users", "4", "--model-config", json.dumps(tiger), "--out", str(run)]) == 0  # fmt: skip
    assert "validating on 4 of 6 valid users during training" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    valid = json.loads((run / "metrics.json").read_text())["valid"]  # written by training
    assert valid["num_items"] == len(keys) and type(valid["num_queries"]) is int
    assert (
        config["spec"]["eval_users"] == 4 and config["state"]["result"]["valid"]["num_queries"] == 4
    )
    assert (
        config["spec"]["model"] == "tiger"
        and config["spec"]["train"]["seed"] == 0
        and "torch" in config["versions"]
        and config["threads"] == torch.get_num_threads()  # weights' last digits may follow it
    )

    assert main(["eval", str(run), "--k", "5", "10", "--split", "test"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["num_queries"] == 6 and metrics["invalid_id_rate"] == 0.0
    assert metrics["num_items"] == len(keys)  # the catalogue it was measured on
    assert type(metrics["num_items"]) is type(metrics["num_queries"]) is int  # counts, as written
    assert 0.0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1.0
    # a run nested inside another run's folder is refused before any work
    nested = ["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model", "tiger",
              "--users", "6", "--epochs", "1", "--out", str(run / "sub")]  # fmt: skip
    capsys.readouterr()
    assert main(nested) == 2
    assert f"--out {run / 'sub'} is inside the run {run}" in capsys.readouterr().err
    assert not (run / "sub").exists()
    # a cut-off over the catalogue (1,682 movies) is left out with a note; the others are scored
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "5000", "5", "10", "--split", "test"]) == 0
    out, err = capsys.readouterr()
    assert "--k 5000 left out: over the catalogue size (1682 items" in err
    assert out.index("recall@5") < out.index("recall@10")  # in increasing order, each once
    assert out.count("recall@10") == 1
    assert (
        json.loads((run / "metrics.json").read_text())["test"]["recall@10"] == metrics["recall@10"]
    )
    assert "recall@5000" not in json.loads((run / "metrics.json").read_text())["test"]
    assert main(["eval", str(run), "--k", "5000"]) == 2
    assert "give a k of at most 1682" in capsys.readouterr().err

    np.save(tmp_path / "new.npy", x[:2] + 0.01)
    (tmp_path / "new.txt").write_text("new-a\nnew-b\n")
    assert (
        main(
            [
                "index",
                "add",
                str(run),
                "--items",
                str(tmp_path / "new.npy"),
                "--keys",
                str(tmp_path / "new.txt"),
            ]
        )
        == 0
    )
    ids = load_run(run).ids
    assert ids.key_of(ids.code_of("new-b")) == "new-b" and len(ids) == len(keys) + 2
    assert "added 2 items" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["index", "stats", str(run), "--json"]) == 0  # a run folder: its index
    assert json.loads(capsys.readouterr().out)["items"] == len(keys) + 2
    # the new items may now take a reserved share of the top-k; a bad share is one line and exit 2
    assert config["state"]["trained_items"] == len(keys)
    assert main(["eval", str(run), "--k", "10", "--cold-share", "0.2"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test (cold_share=0.2)"]["invalid_id_rate"] == 0.0
    assert "recall@5" in saved["test"]  # the default evaluation's figures are kept beside it
    # figures measured after the add say so: the grown catalogue beside the old one's
    assert saved["test (cold_share=0.2)"]["num_items"] == len(keys) + 2
    assert saved["test"]["num_items"] == len(keys)
    assert main(["eval", str(run), "--cold-share", "2"]) == 2
    assert "cold-share must be in [0, 1]" in capsys.readouterr().err


def test_eval_users_scores_an_even_subset_and_saves_it_apart(tmp_path, capsys):
    """A quick estimate on a large log: --users N ranks N of the split's users, and its figures go
    under their own key, beside the full ones."""
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    assert main(["eval", str(run), "--k", "10"]) == 0
    assert main(["eval", str(run), "--k", "10", "--users", "100"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test (users=100)"]["num_queries"] == 100
    assert metrics["test"]["num_queries"] == 943
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--users", "5000"]) == 0  # more than there are
    assert (
        "--users 5000 is over the 943 test users: every one was scored" in capsys.readouterr().err
    )
    assert "test (users=5000)" not in json.loads((run / "metrics.json").read_text())
    assert main(["eval", str(run), "--users", "0"]) == 2
    assert "--users must be >= 1" in capsys.readouterr().err
    assert main(["eval", str(run), "--queries", "10"]) == 2  # retrieval's, refused not ignored
    assert "--queries is for retrieval and text-to-image runs" in capsys.readouterr().err
    new = tmp_path / "new.tsv"
    new.write_text("n1\ta new film\n")
    assert main(["index", "add", str(run), "--items", str(new), "--epochs", "2"]) == 2
    assert "--epochs is for retrieval runs" in capsys.readouterr().err
    assert main(["index", "add", str(tmp_path / "idx"), "--items", str(new), "--epochs", "2"]) == 2
    assert "--epochs is for retrieval runs" in capsys.readouterr().err


def test_a_sasrec_run_reads_past_items_added_after_training(tmp_path, capsys):
    _, x, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "sasrec", "--users", "40", "--epochs", "1", "--out", str(run)]) == 0  # fmt: skip
    np.save(tmp_path / "new.npy", x[:1] + 0.01)
    (tmp_path / "new.txt").write_text("new\n")
    capsys.readouterr()
    assert main(["index", "add", str(run), "--items", str(tmp_path / "new.npy"), "--keys",
                 str(tmp_path / "new.txt")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "scores only the 1,682 items it was trained on" in err
    assert (
        f"until a run is trained on its index (semid train recommender ... --index {run / 'index'}"
        in err
    )
    # it never ranks the added item, so k stops at the items it was trained on
    assert main(["predict", str(run), "--history", '["1"]', "--k", "1683"]) == 2
    assert "--k must be in [1, 1682] (the items it can rank)" in capsys.readouterr().err
    # and its evaluation says it ranked those, not the grown catalogue
    assert main(["eval", str(run), "--k", "10", "--users", "5"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert [m["num_items"] for k, m in saved.items() if k.startswith("test")] == [1682]

    def answered(history: str) -> dict:
        out = tmp_path / "answers.jsonl"
        assert main(["predict", str(run), "--history", history, "--k", "5", "--out", str(out)]) == 0
        return json.loads(out.read_text())

    def answer(history: str) -> list:
        return answered(history)["keys"]

    # the added item has no embedding: it is left out of the history (with a note on stderr and
    # in the answer, which a client of `semid serve` gets), never recommended
    capsys.readouterr()
    assert answer('["1", "new", "2"]') == answer('["1", "2"]')
    assert "the history items added to its index since (such as 'new') are left out" in (
        capsys.readouterr().err
    )
    assert answered('["1", "new", "2"]')["note"] == (
        "history item 'new' was added to the index after training and left out: a sasrec run "
        "reads only the items it was trained on"
    )
    assert "note" not in answered('["1", "2"]')
    # a model process answers the server's resolved inputs: the note is in the answer, and stderr
    # has the server's alone
    from semid.tasks.base import load_predictor

    capsys.readouterr()
    (resolved,) = load_predictor(run).predict_resolved([{"history": ["1", "new", "2"]}], k=5)
    assert resolved["note"].startswith("history item 'new' was added")
    assert capsys.readouterr().err == ""
    assert "new" not in answer('["new", "1"]')
    # a history of added items alone would be answered as no history: refused, with the fix
    capsys.readouterr()
    assert main(["predict", str(run), "--history", '["new"]']) == 2
    err = capsys.readouterr().err
    assert "every item of the history was added to the index after" in err and "retrain" in err


def test_sasrec_leaves_rows_past_its_table_out_of_a_history():
    from semid.generators.sasrec import without_unknown_rows

    items = torch.tensor([[-1, -1, 3, 9, 4], [1, 2, 3, 4, 0], [-1, 9, 9, -1, 2]])
    assert without_unknown_rows(items, 5).tolist() == [
        [-1, -1, -1, 3, 4], [1, 2, 3, 4, 0], [-1, -1, -1, -1, 2]]  # fmt: skip
    assert without_unknown_rows(items, 4).tolist() == [
        [-1, -1, -1, -1, 3], [-1, 1, 2, 3, 0], [-1, -1, -1, -1, 2]]  # fmt: skip
    assert torch.equal(without_unknown_rows(items, 10), items)  # nothing to leave out
    model = build_model("sasrec", {"num_items": 5, "max_len": 5}).eval()
    with torch.no_grad():
        got = model.score_rows({"items": items})
        want = model.score_rows({"items": without_unknown_rows(items, 5)})
    assert torch.allclose(got, want)


def test_a_run_keeps_the_ids_it_learned_when_its_index_is_rebuilt_meanwhile(
    tmp_path, capsys, monkeypatch
):
    """The model learns from a copy of --index taken at the start: a rebuild of --index while it
    trains changes neither what it learns nor the index its run gets."""
    _, _, idx = random_ml100k_index(tmp_path)
    learned = SemanticIDs.load(idx).sha256()
    other = tmp_path / "other"
    assert main(["index", "build", "--embeddings", str(tmp_path / "e.npy"), "--keys",
                 str(tmp_path / "e.txt"), "--quantizer", "rqkmeans:2x32", "--seed", "1",
                 "--out", str(other)]) == 0  # fmt: skip
    assert SemanticIDs.load(other).sha256() != learned
    from semid.tasks.recommend import RecommendTask

    fit = RecommendTask._fit

    def rebuilt_meanwhile(self, *args, **kwargs):
        shutil.rmtree(idx)
        shutil.copytree(other, idx)  # `semid index build --out idx` while training ran
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(RecommendTask, "_fit", rebuilt_meanwhile)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "sasrec", "--users", "20", "--epochs", "1", "--out", str(run)]) == 0  # fmt: skip
    assert load_run(run).ids.sha256() == learned
    assert not (run / "train" / "index").exists()  # the run holds its copy


def test_an_index_copy_that_is_not_what_the_model_learned_is_refused(tmp_path):
    ids, _ = tiny_run(tmp_path / "a")
    with pytest.raises(SemidError, match="changed while .* trained"):
        copy_index(tmp_path / "a" / "index", tmp_path / "b", trained_sha256="0" * 64)
    assert not (tmp_path / "b" / "index").exists()


def test_eval_prints_its_figures_when_metrics_json_may_not_be_replaced(
    tmp_path, capsys, monkeypatch
):
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    import semid.atomic

    real_replace = os.replace

    def immutable(src, dst):  # `chattr +i metrics.json`: the rename over it is not permitted
        if os.path.basename(dst) == "metrics.json":
            raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(semid.atomic.os, "replace", immutable)
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--split", "valid"]) == 0
    out = capsys.readouterr()
    assert "recall@10" in out.out and (
        f"cannot replace {run / 'metrics.json'} (Operation not permitted), so these figures were "
        "not saved" in out.err
    )
    assert not list(run.glob(".metrics.json.*"))  # no temporary file left


def test_eval_whose_metrics_write_fails_on_the_device_says_so_and_exits_2(
    tmp_path, monkeypatch, capsys
):
    """An input/output error while saving metrics.json was a traceback after the figures; the
    figures are still printed, then one line names the file and the fix, exit 2."""
    import errno

    import semid.atomic

    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    real_replace = os.replace

    def failing_disk(src, dst):
        if os.path.basename(dst) == "metrics.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        real_replace(src, dst)

    assert main(["eval", str(run), "--k", "10", "--split", "test"]) == 0  # earlier figures
    before = (run / "metrics.json").read_bytes()
    monkeypatch.setattr(semid.atomic.os, "replace", failing_disk)
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--split", "valid"]) == 2
    out = capsys.readouterr()
    assert "recall@10" in out.out
    assert f"input/output error (the device failed) on {run}/.metrics.json." in out.err
    assert f"while writing {run / 'metrics.json'}; check the device" in out.err
    assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
    assert (run / "metrics.json").read_bytes() == before and not list(run.glob(".metrics.json.*"))


def test_a_run_changed_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """A retrain's final write that begins after a reader began would pair the parts read before
    it with those read after: the reader reads them again."""
    import semid.runs

    tiny_run(tmp_path)
    real_load, loads = semid.runs.load_model, []

    def changed_meanwhile(path):
        loads.append(path)
        if len(loads) == 1:
            os.utime(tmp_path / "config.json", ns=(1, 1))  # a part rewritten meanwhile
        return real_load(path)

    monkeypatch.setattr(semid.runs, "load_model", changed_meanwhile)
    assert load_run(tmp_path).task == "recommend" and len(loads) == 2

    def always_changing(path):
        os.utime(tmp_path / "config.json", ns=(len(loads), len(loads)))
        loads.append(path)
        return real_load(path)

    monkeypatch.setattr(semid.runs, "load_model", always_changing)
    with pytest.raises(SemidError, match="kept changing while it was read"):
        load_run(tmp_path)
    monkeypatch.setattr(semid.runs, "load_model", real_load)
    loads.clear()
    (tmp_path / "metrics.json").write_text("{}")  # an evaluation's figures: no change of a part
    stamp = semid.runs.run_stamp(tmp_path)
    os.utime(tmp_path, ns=(5, 5))
    assert semid.runs.run_stamp(tmp_path) == stamp


def test_predict_without_k_answers_a_catalogue_under_ten_whole(tmp_path, capsys):
    """A first try on a few items: `predict` without --k was refused ('k must be in [1, 6]')."""
    tiny_run(tmp_path, n=6)
    out = tmp_path / "answers.jsonl"
    assert main(["predict", str(tmp_path), "--history", '["i1"]', "--out", str(out)]) == 0
    keys = json.loads(out.read_text())["keys"]
    assert 0 < len(keys) <= 5 and "i1" not in keys  # 6 items, less the one in the history
    capsys.readouterr()
    assert main(["predict", str(tmp_path), "--history", '["i1"]', "--k", "7"]) == 2
    assert "semid: error: --k must be in [1, 6]" in capsys.readouterr().err  # asked for: told
    assert (
        main(["predict", str(tmp_path), "--history", '["i1"]', "--k", "3", "--num-beams", "2"]) == 2
    )
    assert "semid: error: --num-beams must be >= --k (3), got 2" in capsys.readouterr().err
    # the Python API too: no k is 10, or the whole catalogue when it is smaller
    from semid.tasks import load_predictor

    answers = load_predictor(tmp_path).predict([{"history": ["i1"]}])
    assert answers[0]["keys"] == keys


def test_a_refused_training_leaves_the_index_copy_it_found(tmp_path, capsys):
    """A copy of an index in RUN/train/index (a stopped training's) stayed until a refused command
    removed it; an --index inside that folder, which the training replaces, is refused."""
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(idx, run / "train" / "index")
    before = sorted(p.name for p in (run / "train" / "index").iterdir())
    train = ["train", "recommender", "--dataset", "ml-100k", "--model", "pop", "--out", str(run)]
    assert main([*train, "--index", str(tmp_path / "nothing")]) == 2
    assert sorted(p.name for p in (run / "train" / "index").iterdir()) == before
    shutil.copytree(idx, run / "train" / "index" / "mine")
    capsys.readouterr()
    assert main([*train, "--index", str(run / "train" / "index" / "mine")]) == 2
    assert "which the training replaces" in capsys.readouterr().err
    assert (run / "train" / "index" / "mine" / "keys.json").is_file()


def test_predict_out_to_a_pipe_writes_the_answers_through_it(tmp_path, capsys):
    """`--out /dev/stdout` was replaced with a regular file (the atomic write's rename, as root):
    a symlink to a pipe, as /dev/stdout is in a pipeline, gets the answers and stays a link."""
    import subprocess

    tiny_run(tmp_path / "run", n=6)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        code = main(["predict", str(tmp_path / "run"), "--history", '["i1"]', "--out", str(link)])
        got = reader.communicate(timeout=30)[0]
    finally:
        reader.kill()
    assert code == 0 and link.is_symlink() and fifo.is_fifo()
    assert len(json.loads(got)["keys"]) == 5
    assert "wrote" not in capsys.readouterr().out  # the stream holds the answers alone


@pytest.mark.parametrize("model", ["mmgrec", "sasrec"])
def test_a_log_of_three_event_users_is_told_what_training_needs(tmp_path, capsys, model):
    """Every user's last two events are held out: with three events each, no training target is
    left, which was told as 'the training set is empty; check the data split'."""
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\nu2,a,1\nu2,c,2\nu2,b,3\n")
    assert main(["index", "build", "--dataset", str(log), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    argv = ["train", "recommender", "--dataset", str(log), "--index", str(tmp_path / "idx"),
            "--model", model, "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert "only users of four or more events have a training target" in capsys.readouterr().err


def test_a_key_text_file_reads_keys_without_the_spaces_around_them(tmp_path):
    import semid.tasks.items as items

    (tmp_path / "new.tsv").write_text(" a \tfirst film\nb\tsecond film\n")
    keys, texts = items._key_text_lines(
        tmp_path / "new.tsv", (tmp_path / "new.tsv").read_text().splitlines()
    )
    assert keys == ["a", "b"] and texts == ["first film", "second film"]


def test_an_item_given_twice_is_refused_also_when_it_is_indexed_and_skipped(tmp_path):
    import semid.tasks.items as items

    ids = SemanticIDs(["a", "b"], torch.tensor([[0, 0], [1, 0]]), [2, 2])
    (tmp_path / "new.tsv").write_text("b\tan old film\nb\tthe same, retitled\n")
    for skip in (False, True):
        with pytest.raises(SemidError, match="gives item 'b' more than once; list each item once"):
            items.read_new_items(tmp_path / "new.tsv", None, None, indexed=ids, skip_indexed=skip)
    (tmp_path / "old.tsv").write_text("a\tfirst\nb\tsecond\n")
    with pytest.raises(
        SemidError,
        match=r"every item of .*old.tsv is already indexed \(e.g. 'a'\); .*, or pass --skip-indexed to ",
    ):
        items.read_new_items(tmp_path / "old.tsv", None, None, indexed=ids)


@pytest.mark.parametrize("point, after", [("atomic_dir.written", 2), ("atomic_dir.swapped", 3)])
def test_a_first_training_killed_in_its_final_write_resumes(tmp_path, point, after):
    """A first training killed (SIGKILL, power cut) while writing its run left the writer's
    temporaries and snapshot in a folder without a manifest; the same command then refused it as
    "not empty and not a semid run", so the whole training had to start over in a new folder."""
    from _semid_cli import command

    from semid.runs import load_run

    _, _, idx = random_ml100k_index(tmp_path)
    out = tmp_path / "run"
    argv = [*command(), "train", "recommender", "--dataset", "ml-100k", "--index", str(idx),
            "--model", "sasrec", "--model-config", '{"dim": 8, "layers": 1}', "--max-steps", "2",
            "--out", str(out)]  # fmt: skip
    killed = subprocess.run(argv, env=ENV | {"SEMID_FAULT_POINT": point, "SEMID_FAULT_AFTER": str(after)},
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert killed.returncode == 97, killed.stderr
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # what the killed writer left
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "resuming from step 2" in again.stdout + again.stderr
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert len(load_run(out).ids) == 1682


def test_num_beams_for_a_model_that_scores_every_item_is_said_to_have_no_effect(tmp_path, capsys):
    """`--num-beams` was taken and ignored for a scorer (SASRec, most popular): the figures did
    not move, without a word."""
    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "10", "--split", "valid", "--num-beams", "30"]) == 0
    err = capsys.readouterr().err
    assert "this run's model (pop) scores every item; --num-beams has no effect" in err
    assert list(json.loads((run / "metrics.json").read_text())) == ["valid"]  # the split's own
    assert main(["eval", str(run), "--k", "10", "--split", "valid"]) == 0
    assert "--num-beams" not in capsys.readouterr().err
