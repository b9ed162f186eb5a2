"""A catalogue without texts: item vectors from the interactions alone (``interaction_vectors``),
and the CLI path that uses them (`semid index build --dataset log.csv` with no ``--items``)."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from semid.cli.main import main
from semid.data.logs import InteractionLog
from semid.ids import SemanticIDs, load_quantizer
from semid.tasks.items import INTERACTION_VECTORS, interaction_vectors

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MMGREC = '{"dim": 16, "layers": 1, "decoder_layers": 1}'


def two_taste_log(users: int = 40, items: int = 20, seed: int = 0) -> InteractionLog:
    """Users of taste A rate items 0-9, users of taste B items 10-19 (8 events each); item 20 has
    no events."""
    rng = random.Random(seed)
    rows = [(u, rng.randrange(10) + (10 if u % 2 else 0)) for u in range(users) for _ in range(8)]
    u, i = (torch.tensor(c) for c in zip(*rows, strict=True))
    return InteractionLog(users=u, items=i, timestamps=torch.arange(len(rows)), num_users=users,
                          num_items=items + 1, item_keys=[f"i{j}" for j in range(items + 1)])  # fmt: skip


def test_items_of_one_taste_lie_together_and_the_vectors_are_seeded():
    log = two_taste_log()
    x = interaction_vectors(log, seed=0, dim=8)
    assert x.shape == (21, 8) and torch.equal(x, interaction_vectors(log, seed=0, dim=8))
    assert torch.all(x[20] == 0)  # no events, no direction
    unit = torch.nn.functional.normalize(x[:20], dim=1)
    sim = unit @ unit.T
    same = torch.block_diag(torch.ones(10, 10), torch.ones(10, 10)).bool()
    assert sim[same].mean() > 0.5 > sim[~same].mean()


def test_a_tiny_catalogue_gets_at_most_items_minus_one_dimensions():
    log = InteractionLog(users=torch.tensor([0, 0, 1, 1, 2]), items=torch.tensor([0, 1, 1, 2, 0]),
                         timestamps=torch.arange(5), num_users=3, num_items=3, item_keys=["a", "b", "c"])  # fmt: skip
    assert interaction_vectors(log, dim=64).shape == (3, 2)


def write_log(path: Path, users: int = 40, items: int = 30) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for u in range(users):
            for t in range(8):
                w.writerow([f"u{u}", f"it{rng.randrange(items)}", u * 100 + t])


@pytest.mark.slow
def test_an_interactions_only_log_is_indexed_trained_and_grown_by_vectors(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    write_log(tmp_path / "log.csv")
    assert main(["index", "build", "--dataset", "log.csv", "--out", "idx"]) == 0
    assert "no item texts: item vectors from its train interactions" in capsys.readouterr().out
    ids = SemanticIDs.load(tmp_path / "idx")
    assert ids.metadata["item_vectors"] == INTERACTION_VECTORS and len(ids) == 30
    assert main(["train", "recommender", "--dataset", "log.csv", "--index", "idx", "--model", "mmgrec",
                 "--model-config", TINY_MMGREC, "--epochs", "1", "--out", "run"]) == 0  # fmt: skip
    assert "\nwrote run (1 step, 1 full epoch, " in capsys.readouterr().out
    # a run trained on item texts over this index is told that new items will need vectors
    (tmp_path / "items.csv").write_text(  # with an item no interaction names
        "item,text\n" + "".join(f"it{i},movie {i}\n" for i in range(30)) + "spare,a spare one\n"
    )
    capsys.readouterr()
    assert main(["train", "recommender", "--dataset", "log.csv", "--items", "items.csv", "--index", "idx",
                 "--model", "mmgrec", "--model-config", TINY_MMGREC, "--epochs", "1", "--out", "texts-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "idx was built without item texts" in out
    assert "dropped 1 item of " in out and "semid index add RUN --items" not in out  # refused there
    (tmp_path / "new.csv").write_text("item,text\nfresh,a new item\n")
    assert main(["index", "add", "run", "--items", "new.csv"]) == 2
    width = load_quantizer(tmp_path / "run" / "index").dim
    assert "index was built without item texts" in (err := capsys.readouterr().err)
    assert f"give them {width}-d vectors" in err
    np.save(tmp_path / "new.npy", np.ones((1, width), dtype=np.float32))
    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # vectors without keys: keyed by row
    assert main(["index", "add", "copy", "--items", "new.npy"]) == 0  # (they were refused as texts)
    assert "new.npy holds no item keys and none were given" in capsys.readouterr().err
    (tmp_path / "new.txt").write_text("fresh\n")
    assert main(["index", "add", "run", "--items", "new.npy", "--keys", "new.txt"]) == 0
    assert SemanticIDs.load(tmp_path / "run" / "index").keys[-1] == "fresh"
    capsys.readouterr()
    assert main(["predict", "run", "--user", "u0", "--k", "3"]) == 0
    output = capsys.readouterr()
    header = output.out.splitlines()[1]
    assert "fewer than" not in output.err
    # k = the catalogue: the user's history is left out, which a note says
    assert main(["predict", "run", "--user", "u0", "--k", "31"]) == 0
    assert "1 input of 1 got fewer than 31 answers" in capsys.readouterr().err
    assert header.split() == ["rank", "key", "score", "semantic", "ID"]  # no texts, no text column
    assert main(["predict", "run", "--user", "u0", "--texts", "--out", "p.jsonl"]) == 2
    assert "this run has no item texts to send" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_a_user_left_out_for_few_events_is_answered_from_its_events(tmp_path, monkeypatch, capsys):
    """A user of 1 event, left out of training (--min-interactions 3), is answered from that event
    as a new user, whether or not the log changed since training (only a changed log's was)."""
    monkeypatch.chdir(tmp_path)
    write_log(tmp_path / "log.csv")
    with open(tmp_path / "log.csv", "a") as f:
        f.write("lonely,it3,99999\n")
    assert main(["index", "build", "--dataset", "log.csv", "--out", "idx"]) == 0
    assert main(["train", "recommender", "--dataset", "log.csv", "--index", "idx", "--model", "pop",
                 "--out", "run"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", "run", "--user", "lonely", "--k", "3", "--out", "a.jsonl"]) == 0
    answer = json.loads((tmp_path / "a.jsonl").read_text())
    assert len(answer["keys"]) == 3 and "it3" not in answer["keys"]  # its seen item left out
    assert main(["predict", "run", "--history", "it3", "--k", "3", "--out", "h.jsonl"]) == 0
    assert json.loads((tmp_path / "h.jsonl").read_text())["keys"] == answer["keys"]  # as a history
    assert main(["predict", "run", "--users", "all", "--out", "all.jsonl"]) == 0
    assert "lonely" not in (tmp_path / "all.jsonl").read_text()  # all: the users it trained on
    assert main(["predict", "run", "--user", "lonely", "--k", "3", "--out", "s.jsonl"]) == 0
    capsys.readouterr()
    line = json.dumps({"user": "lonely", "split": "test"})
    (tmp_path / "split.jsonl").write_text(line + "\n")
    assert main(["predict", "run", "--users", "split.jsonl", "--out", "s.jsonl"]) == 2
    assert 'fewer than 3 interactions, so no valid or test target: ask without "split"' in (
        capsys.readouterr().err
    )
