"""`semid index build / train retriever / eval` for text-to-image (AVG), on a tiny registered image set."""

import json
import shutil

import pytest
import torch

from semid.cli.main import main
from semid.errors import SemidError
from semid.tasks import load_predictor
from semid.tasks.text2image import Text2ImagePredictor

pytestmark = pytest.mark.usefixtures("fast_image_fits")


@pytest.fixture
def tiny_images(monkeypatch):
    from semid.data import register_dataset
    from semid.data.images import ImageDataset, ImageSplits

    def split(n: int, prefix: str) -> ImageDataset:
        g = torch.Generator().manual_seed(len(prefix))
        labels = torch.arange(n) % 2
        images = torch.randint(0, 60, (n, 8, 8), dtype=torch.uint8, generator=g)
        images[labels == 0, :4] += 180
        images[labels == 1, 4:] += 180
        return ImageDataset(images, [f"{prefix}{i}" for i in range(n)], labels, ["Sneaker", "Bag"])

    register_dataset(
        "tiny-cli-images",
        lambda: ImageSplits(split(96, "train/"), split(24, "test/"), "tiny"),
        "test only",
        kind="images",
    )
    monkeypatch.setattr("semid.data.images.IMAGE_DATASETS", ("fashion-mnist", "tiny-cli-images"))
    return "tiny-cli-images"


@pytest.mark.slow
def test_text_to_image_from_the_command_line(tmp_path, tiny_images, capsys, monkeypatch):
    index, run = tmp_path / "idx", tmp_path / "run"
    spec = "voken:2x4,hidden=16,latent=4"
    assert (
        main(["index", "build", "--dataset", tiny_images, "--quantizer", spec, "--out", str(index)])
        == 0
    )
    capsys.readouterr()
    assert main(["train", "retriever", "--dataset", tiny_images, "--model", "avg", "--index", str(index),
                 "--epochs", "2", "--batch-size", "32", "--out", str(run)]) == 0  # fmt: skip
    summary = dict(line.split() for line in capsys.readouterr().out.splitlines()[2:9])
    assert summary["train_images"] == "96" and summary["indexed_images"] == "24"
    assert summary["classes"] == "2" and summary["epochs"] == "2"
    assert main(["eval", str(run), "--k", "5", "10", "--split", "test"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "precision@10" in flat and "invalid_id_rate" in flat
    capsys.readouterr()
    # images have no validation split: --split valid is refused, not scored on test as "valid"
    assert main(["eval", str(run), "--split", "valid"]) == 2
    assert "leave out --split valid" in capsys.readouterr().err
    assert "valid" not in json.loads((run / "metrics.json").read_text())
    # --batch-size reaches the ranking (it was a fixed 64), with the same figures
    sizes = []
    rank = Text2ImagePredictor.rank_embeddings

    def spy(self, queries, k, num_beams, batch_size=64, item_mix=None):
        sizes.append(batch_size)
        return rank(self, queries, k, num_beams, batch_size, item_mix)

    monkeypatch.setattr(Text2ImagePredictor, "rank_embeddings", spy)
    assert main(["eval", str(run), "--k", "5", "10", "--batch-size", "3"]) == 0
    assert sizes == [3] and json.loads((run / "metrics.json").read_text()) == metrics
    # --queries N: an evenly spaced subset of the test queries, saved apart
    assert main(["eval", str(run), "--k", "5", "--queries", "3"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test (queries=3)"]["num_queries"] == 3 and saved["test"] == metrics["test"]
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "a photo of a sneaker", "--k", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:6]  # the input, the header and its rule first
    assert all(row.split()[-1] in ("Sneaker", "Bag") for row in rows), rows  # each image's class
    # a client that sends a user (serve's {"users": [...]}) is told what this run answers
    with pytest.raises(SemidError, match='retrieves images for queries, not for a user; send {"q'):
        load_predictor(run).check_input({"user": "u0"})


def test_avg_needs_an_image_dataset(tmp_path, capsys):
    code = main(
        [
            "train",
            "retriever",
            "--dataset",
            "ml-100k",
            "--model",
            "avg",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "not an image dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_an_index_of_other_images_is_refused_before_training(tmp_path, tiny_images, capsys):
    from semid.data import load_dataset, register_dataset
    from semid.data.images import ImageSplits

    tiny = load_dataset(tiny_images)
    renamed = [tiny.train, tiny.test]
    for part, prefix in zip(renamed, ("elsewhere/", "other/"), strict=True):
        part.keys = [prefix + k for k in part.keys]
    register_dataset("tiny-cli-other", lambda: ImageSplits(*renamed, "other"), "test only", kind="images")  # fmt: skip
    index, run = tmp_path / "idx", tmp_path / "run"
    build = ["index", "build", "--quantizer", "voken:2x4,hidden=16,latent=4", "--out", str(index)]
    assert main([*build, "--dataset", tiny_images]) == 0
    capsys.readouterr()
    train = ["train", "retriever", "--model", "avg", "--index", str(index), "--epochs", "1", "--out", str(run)]  # fmt: skip
    assert main([*train, "--dataset", "tiny-cli-other"]) == 2
    err = capsys.readouterr().err
    assert (
        "was built from other images than tiny-cli-other with seed 0 (it indexes 'test/0')" in err
    )
    assert not run.exists()


@pytest.mark.slow
def test_a_run_that_builds_its_own_index_can_be_run_again(
    tmp_path, tiny_images, capsys, monkeypatch
):
    """Without --index, train builds the index beside its checkpoints and puts it in the run with
    the model: the same command again resumes (it was refused as building over the run's own index),
    and a retrain stopped before the end leaves the earlier run's index as it was."""
    run = tmp_path / "run"
    train = ["train", "retriever", "--dataset", tiny_images, "--model", "avg", "--quantizer",
             "voken:2x4,hidden=16,latent=4", "--epochs", "1", "--batch-size", "32", "--out", str(run)]  # fmt: skip
    assert main(train) == 0
    assert (run / "index" / "keys.json").is_file() and not (run / "train" / "index").exists()
    capsys.readouterr()
    assert main(train) == 0
    assert "resuming from step" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in (run / "index").iterdir() if p.is_file()}
    import semid.training

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(semid.training, "train_model", stopped)
    assert main([*train[:-2], "--seed", "1", "--out", str(run)]) == 130  # another index, stopped
    assert {p.name: p.read_bytes() for p in (run / "index").iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_an_interrupted_training_resumes_with_the_index_it_built(tmp_path, tiny_images, capsys,
                                                                 monkeypatch):  # fmt: skip
    """A training stopped after its checkpoints resumes with the index it built beside them (it
    fitted the image encoder and quantizer again, minutes on a real collection, and a rebuild that
    differed at all lost the checkpoints); another seed, an index missing a part or --no-resume
    builds a new one."""
    import semid.training
    from semid.tasks.text2image import Text2ImageTask

    run = tmp_path / "run"
    train = ["train", "retriever", "--dataset", tiny_images, "--model", "avg", "--quantizer",
             "voken:2x4,hidden=16,latent=4", "--epochs", "1", "--batch-size", "32", "--out", str(run)]  # fmt: skip
    train_model, build = semid.training.train_model, Text2ImageTask.build_index
    builds = []

    def counted_build(self, source, quantizer, out, collisions="extra-level", seed=0, **options):
        builds.append(seed)
        return build(self, source, quantizer, out, collisions, seed, **options)

    def stopped_after_its_checkpoints(*args, **kwargs):
        train_model(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Text2ImageTask, "build_index", counted_build)
    monkeypatch.setattr(semid.training, "train_model", stopped_after_its_checkpoints)
    assert main(train) == 130 and builds == [0]
    monkeypatch.setattr(semid.training, "train_model", train_model)
    capsys.readouterr()
    assert main(train) == 0 and builds == [0]  # no second build
    err = capsys.readouterr().err
    assert "resuming with the index the interrupted training built" in err
    assert "resuming from step" in err and (run / "index" / "keys.json").is_file()
    assert not (run / "train" / "index_recipe.json").exists()
    other = [*train[:-2], "--seed", "1", "--out", str(tmp_path / "other")]
    monkeypatch.setattr(semid.training, "train_model", stopped_after_its_checkpoints)
    assert main(other) == 130
    shutil.rmtree(tmp_path / "other" / "train" / "index" / "image_encoder")  # a part lost
    monkeypatch.setattr(semid.training, "train_model", train_model)
    assert main(other) == 0 and (tmp_path / "other" / "index" / "image_encoder").is_dir()
    third = [*train[:-2], "--seed", "2", "--out", str(tmp_path / "third")]
    monkeypatch.setattr(semid.training, "train_model", stopped_after_its_checkpoints)
    assert main(third) == 130
    monkeypatch.setattr(semid.training, "train_model", train_model)
    assert main([*third, "--no-resume"]) == 0  # the same recipe, but asked to start over
    assert builds == [0, 1, 1, 2, 2]  # a damaged index, another seed and a start over: built again


@pytest.mark.slow
def test_a_run_keeps_the_ids_it_learned_when_its_index_is_rebuilt_meanwhile(
    tmp_path, tiny_images, monkeypatch
):
    """The model learns from a copy of --index taken once the inputs are checked: a rebuild of
    --index while it trains changes neither the model nor its run's index (the run was refused at
    the end, losing the training)."""
    import shutil

    import semid.training
    from semid.ids import SemanticIDs
    from semid.runs import load_run

    index, other, run = tmp_path / "idx", tmp_path / "other", tmp_path / "run"
    build = ["index", "build", "--dataset", tiny_images, "--quantizer", "voken:2x4,hidden=16,latent=4"]  # fmt: skip
    assert main([*build, "--out", str(index)]) == 0
    assert main([*build, "--seed", "1", "--out", str(other)]) == 0
    learned = SemanticIDs.load(index).sha256()
    assert SemanticIDs.load(other).sha256() != learned
    train_model = semid.training.train_model

    def rebuilt_meanwhile(*args, **kwargs):
        shutil.rmtree(index)
        shutil.copytree(other, index)  # `semid index build --out idx` while training ran
        return train_model(*args, **kwargs)

    monkeypatch.setattr(semid.training, "train_model", rebuilt_meanwhile)
    assert main(["train", "retriever", "--dataset", tiny_images, "--model", "avg", "--index", str(index),
                 "--epochs", "1", "--batch-size", "32", "--out", str(run)]) == 0  # fmt: skip
    assert load_run(run).ids.sha256() == learned
    assert not (run / "train" / "index").exists()  # the run holds its copy


@pytest.mark.parametrize("given, kept", [([], 8), (["--extra-codes", "3"], 3)])
def test_avg_keeps_the_extra_codes_it_is_given(tmp_path, monkeypatch, given, kept):
    """`--extra-codes` was read for documents only: an image run kept 8 whatever was given, while
    an image add that ran out of codes said to retrain with a larger one."""
    from semid.tasks import get_task

    seen = []  # the spec the command made; then the command stops (1 / 0) before any training
    monkeypatch.setattr(type(get_task("text2image")), "train",
                        lambda self, spec, *a, **k: seen.append(spec) or 1 / 0)  # fmt: skip
    with pytest.raises(ZeroDivisionError):
        main(["train", "retriever", "--dataset", "digits", "--model", "avg", "--out",
              str(tmp_path / "run"), *given])  # fmt: skip
    assert seen[0].extra_codes == kept
