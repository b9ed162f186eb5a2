"""Run directories: ``index/`` (SemanticIDs + quantizer), ``model/``, ``config.json``, ``metrics.json``.

``config.json`` holds everything needed to reproduce the run: task, model family and its config,
dataset, training config (with the seed), evaluation settings, and library versions. Loading a run
checks the versions and that the model's vocabulary covers the index, and says what is wrong.
Model families: ``pop`` and ``sasrec`` (semid.baselines) or any registered generator.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import semid
from semid.atomic import atomic_dir, write_json
from semid.errors import SemidError
from semid.ids import SemanticIDs

RUN_FORMAT = 1
BASELINES = ("pop", "sasrec")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results."""
    import transformers

    return {
        "semid": semid.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


@dataclass
class Run:
    """A loaded run directory: its config, index and model (None for ``pop``)."""

    path: Path
    config: dict[str, Any]
    ids: SemanticIDs
    model: Any

    @property
    def index_path(self) -> Path:
        """The run's index folder."""
        return self.path / "index"


def copy_index(index: str | os.PathLike, run: str | os.PathLike) -> None:
    """Copy an index folder (with its quantizer) into ``run/index``, atomically."""
    SemanticIDs.load(index)  # fail early, with the index's own message, if it is not one
    with atomic_dir(Path(run) / "index") as tmp:
        shutil.copytree(index, tmp, dirs_exist_ok=True)


def write_config(run: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write ``run/config.json`` with the run format and versions added."""
    write_json(
        Path(run) / "config.json", {"run_format": RUN_FORMAT, "versions": versions(), **config}
    )


def read_config(run: str | os.PathLike) -> dict[str, Any]:
    """``run/config.json``, checked for format and semid version."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise SemidError(
            f"{run} is not a run directory (no config.json); create one with `semid train recommender`"
        )
    config = json.loads(path.read_text())
    if config.get("run_format", 0) > RUN_FORMAT:
        raise SemidError(
            f"{run} was written by a newer semid (run format {config['run_format']}); upgrade semid"
        )
    saved = config.get("versions", {}).get("semid", "0")
    if _major_minor(saved) > _major_minor(semid.__version__):
        raise SemidError(
            f"{run} was written by semid {saved}, newer than this {semid.__version__}; upgrade semid"
        )
    return config


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def load_model(run: str | os.PathLike, config: dict[str, Any]) -> Any:
    """The run's trained model (eval mode), or None for ``pop``."""
    name = config["model"]
    if name == "pop":
        return None
    folder = Path(run) / "model"
    if name == "sasrec":
        from semid.baselines import SASRec

        model = SASRec.from_pretrained(folder)
    else:
        from semid.generator import Generator

        model = Generator.from_pretrained(folder)
    return model.eval()


def check_vocabulary(model: Any, ids: SemanticIDs, where: str = "the run") -> None:
    """Raise SemidError unless the model can emit (or score) every ID of the index."""
    if model is None:
        return
    if hasattr(model, "codebook_sizes"):
        sizes = model.codebook_sizes
        if len(sizes) != ids.levels:
            raise SemidError(
                f"the model of {where} writes {len(sizes)}-level IDs but its index has {ids.levels} levels; "
                "train the model on this index"
            )
        over = [
            lv for lv, (m, i) in enumerate(zip(sizes, ids.codebook_sizes, strict=True)) if i > m
        ]
        if over:
            lv = over[0]
            raise SemidError(
                f"the index of {where} uses {ids.codebook_sizes[lv]} codes at level {lv} but the model only knows "
                f"{sizes[lv]}; retrain on this index (or train with a larger --extra-codes before adding items)"
            )
    elif getattr(model.config, "num_items", 0) > len(ids):
        raise SemidError(
            f"the model of {where} scores {model.config.num_items} items but its index holds {len(ids)}; "
            "the index was replaced: retrain on it"
        )


def load_run(run: str | os.PathLike) -> Run:
    """Load config, index and model of a run directory and check that they fit together."""
    path = Path(run)
    config = read_config(path)
    ids = SemanticIDs.load(path / "index")
    model = load_model(path, config)
    check_vocabulary(model, ids, str(path))
    return Run(path, config, ids, model)


def make_recommender(
    name: str,
    model: Any,
    ids: SemanticIDs,
    data: Any,
    num_beams: int = 20,
    trained_items: int | None = None,
    cold_share: float = 0.0,
    cold_prefix: int = 1,
) -> Any:
    """The object whose ``recommend(batch, k)`` ranks index rows: pop, sasrec, or beam search over a generator.

    Generators only: rows from ``trained_items`` on were added after training, and up to
    ``cold_share`` of the top-k may go to them when their first ``cold_prefix`` codes match a
    generated ID (see ``GeneratorRecommender``)."""
    from semid.baselines import MostPopular
    from semid.recommend import GeneratorRecommender

    if name == "pop":
        return MostPopular(data.popularity())
    if name == "sasrec":
        return model
    return GeneratorRecommender(
        model,
        ids,
        num_beams,
        trained_items=trained_items,
        cold_share=cold_share,
        cold_prefix=cold_prefix,
    )


def update_metrics(run: str | os.PathLike, split: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Merge ``metrics`` under ``split`` into ``run/metrics.json`` (atomically); returns the whole file."""
    path = Path(run) / "metrics.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[split] = metrics
    write_json(path, current)
    return current


def command_line() -> str:
    """The command that started this process, for provenance."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
