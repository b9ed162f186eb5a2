"""`semid train recommender`: train pop, sasrec or a generator on a leave-one-out split into a run directory."""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semid.artifacts import parse_json_object
from semid.atomic import check_writable
from semid.cli.table import format_table
from semid.errors import SemidError
from semid.generator import load_weights
from semid.ids import SemanticIDs
from semid.recommend import (
    CodeCollator,
    RecData,
    SequenceDataset,
    TargetDataset,
    evaluate,
    prepare_data,
)
from semid.runs import (
    BASELINES,
    command_line,
    copy_index,
    make_recommender,
    update_metrics,
    write_config,
)
from semid.training import TrainConfig, Trainer

DESCRIPTION = (
    "Train a recommender (tiger, mmgrec, sasrec or pop) on a dataset's leave-one-out split."
)
EXAMPLE = (
    "semid train recommender --dataset ml-100k --index runs/ml-100k/index --model tiger --out runs/ml-100k/tiger\n"
    "  semid train recommender --dataset ml-1m --index runs/ml-1m/index --model mmgrec --epochs 20 --out runs/ml-1m/mmgrec"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid train recommender`."""
    p.add_argument(
        "--dataset",
        required=True,
        help="embedded dataset name (ml-100k, ml-1m) or a MovieLens folder",
    )
    p.add_argument(
        "--index",
        type=Path,
        required=True,
        help="index folder from `semid index build` on the same dataset",
    )
    p.add_argument("--model", required=True, help="tiger, mmgrec, sasrec or pop")
    p.add_argument("--out", type=Path, required=True, help="run directory to create (or resume)")
    p.add_argument(
        "--model-config", default="{}", help="JSON of model fields, e.g. '{\"d_model\": 64}'"
    )
    p.add_argument("--epochs", type=int, default=30, help="max epochs (default: %(default)s)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early stopping: evaluations without valid NDCG@10 gain",
    )
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument(
        "--max-history", type=int, default=50, help="history items per user (default: %(default)s)"
    )
    p.add_argument(
        "--num-beams",
        type=int,
        default=20,
        help="beams for generators, >= k (default: %(default)s)",
    )
    p.add_argument(
        "--eval-users", type=int, help="validate during training on this many users only (faster)"
    )
    p.add_argument(
        "--users", type=int, help="keep only the first N users (a small slice, for smoke tests)"
    )
    p.add_argument(
        "--extra-codes", type=int, default=8,
        help="spare tokens in the last level so `semid index add` can disambiguate new items (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if --out holds a checkpoint"
    )


@dataclass
class TrainSpec:
    """Everything `train_run` needs; saved in the run's config.json."""

    dataset: str
    model: str
    model_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    max_history: int = 50
    num_beams: int = 20
    eval_users: int | None = None
    users: int | None = None
    extra_codes: int = 8


def load_data(dataset_name: str, ids: SemanticIDs, max_history: int, users: int | None) -> RecData:
    """The dataset's split, items mapped to index rows; optionally only the first ``users`` users."""
    from semid.data.registry import load_dataset

    dataset = load_dataset(dataset_name)
    if users is not None:
        dataset = slice_users(dataset, users)
    return prepare_data(dataset, ids, max_history)


def slice_users(dataset: Any, users: int) -> Any:
    """A copy of a RecDataset with only the interactions of users 0..users-1."""
    import dataclasses

    log = dataset.interactions
    keep = log.users < users
    sliced = dataclasses.replace(
        log,
        users=log.users[keep],
        items=log.items[keep],
        timestamps=log.timestamps[keep],
        num_users=min(users, log.num_users),
    )
    return dataclasses.replace(dataset, interactions=sliced, user_keys=dataset.user_keys[:users])


def build_model(spec: TrainSpec, ids: SemanticIDs) -> Any:
    """A fresh model of the spec's family sized for the index (None for pop)."""
    if spec.model == "pop":
        return None
    if spec.model == "sasrec":
        from semid.baselines import SASRec, SASRecConfig

        return SASRec(
            SASRecConfig(num_items=len(ids), max_len=spec.max_history, **spec.model_config)
        )
    from semid.generator import build_generator

    sizes = list(ids.codebook_sizes)
    if ids.collision is not None and ids.collision.extra_level:
        sizes[-1] += spec.extra_codes  # room for new items' disambiguation tokens
    config = {**spec.model_config, "codebook_sizes": sizes}
    if config.pop("item_embeddings", False):  # one learned vector per index row (mmgrec)
        config["num_items"] = len(ids)
    return build_generator(spec.model, config)


def train_run(
    spec: TrainSpec, index: Path, out: Path, resume: bool = True, dataset: Any = None
) -> dict[str, Any]:
    """Copy the index into ``out``, train, save ``out/model`` and ``out/config.json``; returns a summary.

    ``dataset``: an in-memory RecDataset to use instead of loading ``spec.dataset`` (e.g. a modified one)."""
    check_writable(out / "config.json")
    if Path(index).resolve() != (out / "index").resolve():
        copy_index(index, out)
    ids = SemanticIDs.load(out / "index")
    if dataset is None:
        data = load_data(spec.dataset, ids, spec.max_history, spec.users)
    else:
        data = prepare_data(
            dataset if spec.users is None else slice_users(dataset, spec.users),
            ids,
            spec.max_history,
        )
    config = TrainConfig.from_dict(spec.train)
    torch.manual_seed(config.seed)
    model = build_model(spec, ids)
    started = time.perf_counter()
    summary: dict[str, Any] = {"steps": 0, "epochs": 0, "best_step": 0}
    if model is not None:
        result = _fit(model, spec, ids, data, config, out, resume)
        if result.best_path.is_file():  # absent when max_steps ended training before any validation
            load_weights(model, result.best_path)
        model.save_pretrained(out / "model")
        summary = {
            "steps": result.steps,
            "epochs": result.epochs,
            "best_step": result.best_step,
            "valid": result.best_metrics,
        }
    summary["train_seconds"] = round(time.perf_counter() - started, 2)
    write_config(
        out,
        {
            "task": "recommend",
            **spec.__dict__,
            "trained_items": len(ids),  # rows added later by `semid index add` are cold-start items
            "train": config.to_dict(),
            "command": command_line(),
            "result": summary,
        },
    )
    return summary


def _fit(
    model: Any,
    spec: TrainSpec,
    ids: SemanticIDs,
    data: RecData,
    config: TrainConfig,
    out: Path,
    resume: bool,
):
    if getattr(model, "train_format", "target") == "sequence" or spec.model == "sasrec":
        dataset = SequenceDataset(data, spec.max_history)
    else:
        dataset = TargetDataset(data, data.positions("train"), spec.max_history)
    codes = ids.codes if spec.model != "sasrec" else None
    if hasattr(model, "use_trie"):
        from semid.trie import PrefixTrie

        model.use_trie(PrefixTrie.from_codes(ids.codes, model.codebook_sizes))

    def validate(m: Any) -> dict[str, float]:
        rec = make_recommender(spec.model, m, ids, data, spec.num_beams)
        return evaluate(
            rec, data, "valid", codes=codes, max_len=spec.max_history, max_users=spec.eval_users
        )

    if not resume:  # the trainer clears its checkpoints but not the best weights of an earlier run
        shutil.rmtree(out / "train" / "best", ignore_errors=True)
    trainer = Trainer(
        model,
        dataset,
        config,
        out / "train",
        evaluate=validate,
        collate_fn=CodeCollator(dataset.collate, codes),
    )
    return trainer.fit(resume=resume)


def run(args: argparse.Namespace) -> int:
    """Train, then print the validation metrics of the best epoch."""
    model_config = parse_json_object(args.model_config, "--model-config", '{"d_model": 64}')
    if args.model not in BASELINES:
        from semid.generator import available_generators

        if args.model not in available_generators():
            raise SemidError(
                f"unknown --model {args.model!r}; choose one of {', '.join([*BASELINES, *available_generators()])}"
            )
    train = {
        "max_epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    train |= {
        "early_stopping_patience": args.patience,
        "seed": args.seed,
        "checkpoint_every": 1000,
        "keep_checkpoints": 1,
    }
    spec = TrainSpec(
        dataset=args.dataset, model=args.model, model_config=model_config, train=train, max_history=args.max_history,
        num_beams=args.num_beams, eval_users=args.eval_users, users=args.users, extra_codes=args.extra_codes,
    )  # fmt: skip
    summary = train_run(spec, args.index, args.out, resume=not args.no_resume)
    valid = summary.get("valid", {})
    if valid:
        update_metrics(args.out, "valid", valid)
        print(format_table(["metric", "valid"], [[k, v] for k, v in valid.items()]))
    print(f"\nwrote {args.out} ({summary['epochs']} epochs, {summary['train_seconds']:.0f} s)")
    return 0
