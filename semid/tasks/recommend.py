"""Sequential recommendation: the next item a user interacts with, on a leave-one-out split.

Protocol (docs/protocols.md): each user's events ordered by time; the last is the test target, the
second to last the valid target, the rest train; histories truncated to ``max_history`` items; full
ranking over every indexed item except those the user interacted with before the target
(RecBole's full-sort convention; ``keep_seen`` ranks everything); Recall@k and NDCG@k, and the
share of returned IDs outside the index (the invalid-ID rate; 0 under the trie). Generators take
their top-k from trie-constrained beam search, scorers (pop, SASRec) from full scoring: both through
:func:`semid.ranking.ranker_for`. Semantic IDs only ever see training interactions.
Answers for a user or a history (``predict``, ``serve``) come from ``recommend_predict``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from semid.atomic import check_output_folder
from semid.data.interaction_files import without_add_by_text_hint
from semid.data.logs import RecDataset
from semid.data.sequences import (
    CodeCollator,
    RecData,
    SequenceDataset,
    TargetDataset,
    prepare_data,
    slice_users,
)
from semid.distributed import is_main_process
from semid.errors import SemidError
from semid.generator import Generator
from semid.hybrid import Candidates, HybridRanker, choose_mix
from semid.ids import SemanticIDs, load_quantizer, quantizer_dim
from semid.indexing import add_items
from semid.metrics import compute_metrics
from semid.models import is_generator, save_model
from semid.notes import note, tell
from semid.progress import batch_starts
from semid.ranking import Ranker, Ranking, ranker_for
from semid.runs import (
    Run,
    copy_index,
    load_run,
    replacing_run,
    training_index,
    write_run,
)
from semid.tasks.base import (
    EvalOptions,
    IndexSource,
    Task,
    added_summary,
    move,
    register_task,
    subset_positions,
)
from semid.tasks.data import (
    check_fingerprint,
    fingerprint,
    trained_on,
)
from semid.tasks.items import (
    INTERACTION_VECTORS,
    build_item_index,
    holds_item_texts,
    new_model,
    read_new_items,
    source_dataset,
)
from semid.tasks.recommend_predict import (  # UserHistories: its home before recommend_predict
    RecommendPredictor,
    UserHistories,  # noqa: F401
    rankable_items,
)
from semid.tasks.specs import RecommendSpec
from semid.wording import counted

# the spec's fields, besides the data and the IDs, that shape the training examples
SPLIT_FIELDS = ("columns", "missing_text", "min_interactions", "users")


class RecommendTask(Task):
    """Recommenders: index items, train on a leave-one-out split, rank unseen items per user."""

    name = "recommend"
    spec_class = RecommendSpec
    add_options = ("--keys", "--encoder")  # embeddings' keys; the encoder of new item texts

    def _build_index(
        self, source: IndexSource, quantizer: str, out: Path, collisions: str, seed: int
    ) -> tuple[SemanticIDs, list[str]]:
        """Semantic IDs of a dataset's items (texts embedded with MiniLM) or of given embeddings."""
        return build_item_index(source, quantizer, out, collisions, seed)

    def load_data(self, spec: RecommendSpec, ids: SemanticIDs, run: Run | None = None) -> RecData:
        """The spec's dataset split, items mapped to index rows (optionally only the first users);
        for a trained ``run``, after checking that its data files did not change."""
        return self.load_split(spec, ids, run)[1]

    def load_split(
        self, spec: RecommendSpec, ids: SemanticIDs, run: Run | None = None
    ) -> tuple[RecDataset, RecData]:
        """The spec's dataset (as loaded, with its notes) and its split, as `load_data`."""
        if run is not None:
            check_fingerprint(run, spec.dataset, spec.items)
        dataset = source_dataset(spec)
        if spec.users is not None:
            dataset = slice_users(dataset, spec.users)
        return dataset, prepare_data(dataset, ids, spec.max_history)

    def _train(self, spec: RecommendSpec, out: Path, index: Path | None = None, resume: bool = True,
               device: str = "auto") -> dict:  # fmt: skip
        """Copy the index into ``out``, train, save ``out/model`` and the run files; returns a summary."""
        check_output_folder(out)
        if index is None:
            raise SemidError("a recommender needs --index (build one with `semid index build`)")
        ids = SemanticIDs.load(index)
        ids_sha256 = ids.sha256()  # what the model learns: its copy of --index must be it (below)
        dataset, data = self.load_split(spec, ids)
        if is_main_process():
            by_vectors = ids.metadata.get("item_vectors") == INTERACTION_VECTORS
            data_notes = [without_add_by_text_hint(n) if by_vectors else n for n in dataset.notes]
            lines = [*data_notes, describe_data(dataset, data)]
            if by_vectors and dataset.item_texts is not None:
                lines.append(f"note: {index} was built without item texts (item vectors from the "
                             "interactions): `semid index add` will take new items' vectors, not "
                             "their texts; build the index with --items too to add items by text")  # fmt: skip
            num_valid = len(data.positions("valid"))
            if spec.eval_users is not None and spec.eval_users < num_valid:
                lines.append(f"validating on {spec.eval_users:,} of {counted(num_valid, 'valid user')} "
                             "during training (--eval-users)")  # fmt: skip
            tell("\n".join(lines))
        state: dict[str, Any] = {
            "trained_items": len(ids),
            "data_sha256": fingerprint(spec.dataset, spec.items),
        }
        torch.manual_seed(spec.train.seed)
        model = new_model(spec, ids)
        started = time.perf_counter()
        summary: dict[str, Any] = {"steps": 0, "epochs": 0, "best_step": 0}
        # statistics of the training data, fitted before any gradient step (MMGRec's cooccur,
        # most-popular's counts)
        if hasattr(model, "fit_train_sequences_"):
            model.fit_train_sequences_(*data.train_sequences())
        index = training_index(index, out, ids_sha256, device)
        if getattr(model, "trainable", True):
            stamp = trained_on(state["data_sha256"], spec.dataset, ids_sha256, spec, SPLIT_FIELDS)
            result = self._fit(model, spec, ids, data, out, resume, device, stamp)
            started -= result.resumed_after_s  # train_seconds counts the earlier processes too
            summary = {"steps": result.steps, "epochs": result.epochs,
                       "best_step": result.best_step, "valid": result.best_metrics}  # fmt: skip
            if is_generator(model) and model.has_item_head() and is_main_process():  # on valid
                by_weight, at_best = tune_item_mix(model, ids, data, spec)
                summary["item_mix_valid_ndcg@10"] = by_weight
                summary["item_mix"] = model.config.item_mix
                # the valid figures of the saved model: at the chosen weight, not training's
                summary["valid"] = {**result.best_metrics, **at_best}
        summary["train_seconds"] = round(time.perf_counter() - started, 2)
        if "valid" in summary:  # the catalogue ranked over, as `semid eval` records it
            summary["valid"] = {**summary["valid"], "num_items": len(ids)}
        if is_main_process():
            with replacing_run(out):
                copy_index(index, out, trained_sha256=ids_sha256)
                save_model(model, out / "model")
                # rows added later by `semid index add` (beyond trained_items) are cold-start items
                write_run(out, self.name, spec, {**state, "result": summary})
        return summary

    def _fit(self, model: Any, spec: RecommendSpec, ids: SemanticIDs, data: RecData, out: Path,
             resume: bool, device: str, stamp: dict[str, Any]):  # fmt: skip
        if getattr(model, "train_format", "target") == "sequence":
            dataset = SequenceDataset(data, training_window(model, spec.max_history))
        else:
            dataset = TargetDataset(data, data.positions("train"), spec.max_history)
        if len(dataset) == 0:
            raise SemidError("nothing to train on: each user's last two events are held out (the "
                             "valid and test targets), so only users of four or more events have "
                             "a training target; give a log with such users")  # fmt: skip
        codes = ids.codes if is_generator(model) else None
        if is_generator(model):
            model.use_trie(ids.trie(model.codebook_sizes))

        def validate(m: Any) -> dict[str, float]:
            device = str(next(m.parameters()).device)  # the trainer's device
            ranker = ranker_for(m, ids, spec.num_beams)
            ranker = ranker.to(device)
            return evaluate_ranker(ranker, data, "valid", codes=codes, max_len=spec.max_history,
                                   max_users=spec.eval_users, device=device)  # fmt: skip

        collate = CodeCollator(dataset.collate, codes)
        from semid.training import train_model  # here: accelerate loads only to train

        return train_model(
            model, dataset, spec.train, out / "train", validate, collate, resume, device, stamp
        )

    def _evaluate(self, run: Run, options: EvalOptions) -> dict[str, float]:
        """Full-ranking Recall/NDCG@k of a run on its valid or test split."""
        if options.max_queries is not None:
            raise SemidError(f"--queries is for retrieval and text-to-image runs; {run.path} is a "
                             "recommendation run: take a subset of its users with --users N")  # fmt: skip
        spec = self.spec_of(run)
        data = self.load_data(spec, run.ids, run)
        ranker = self.ranker(run, spec, options)
        codes = run.ids.codes if is_generator(run.model) else None
        metrics = evaluate_ranker(
            ranker, data, options.split, options.ks, codes, spec.max_history, options.batch_size,
            options.max_users, exclude_seen=not options.keep_seen, device=options.device,
        )  # fmt: skip
        return metrics | {"num_items": rankable_items(run)}

    def ranker(self, run: Run, spec: RecommendSpec, options: EvalOptions) -> Ranker:
        """The run's ranker with the options' search-time settings, on the options' device."""
        run.model.to(options.device)
        generator_options = {}
        if is_generator(run.model):
            generator_options = {"trained_items": run.state.get("trained_items"), "item_mix": options.item_mix,
                    "cold_share": options.cold_share, "cold_prefix": options.cold_prefix}  # fmt: skip
        elif options.cold_share or options.item_mix is not None:
            given = "--cold-share" if options.cold_share else "--item-mix"
            raise SemidError(
                f"{given} needs a generator run (one that generates semantic IDs); this "
                f"{spec.model} run scores items directly: leave out {given}"
            )
        elif options.num_beams is not None:  # said, not ignored: the figures would not move
            note(f"this run's model ({spec.model}) scores every item; --num-beams has no effect")
        ranker = ranker_for(
            run.model, run.ids, options.num_beams or spec.num_beams, **generator_options
        )
        return ranker.to(options.device)

    def _add(self, run_path: Path, source: Path, keys: Path | None = None,
            encoder: str | None = None, device: str = "cpu", skip_indexed: bool = False,
            **options: Any) -> dict:  # fmt: skip
        """New items (texts as in ``read_new_items``, embedded on ``device``, or embeddings + keys)
        get IDs from the saved quantizer; the model can recommend them at once (no retraining).
        Items already indexed are refused, or left out with ``skip_indexed`` (``added`` 0 when
        none is new)."""
        run = load_run(run_path, self.name)
        columns = self.spec_of(run).columns
        if run.ids.metadata.get("item_vectors") == INTERACTION_VECTORS and holds_item_texts(source):
            raise SemidError(
                f"{run_path}'s index was built without item texts (its item vectors come from the "
                f"interactions, which new items have none of yet); give them "
                f"{load_quantizer(run.index_path).dim}-d vectors (--items new.npy --keys new.txt), or "
                "build the index and train the run with --items FILE to add items by text"
            )
        new_keys, x, texts = read_new_items(
            source, keys, encoder, run.ids.metadata.get("encoder"), columns, run.ids, device,
            skip_indexed, quantizer_dim(run.index_path),
        )  # fmt: skip
        if not new_keys:
            return added_summary(run.ids, [])
        ids, codes = add_items(run.index_path, new_keys, x, run.model, texts)
        if not is_generator(run.model):
            trained = run.state.get("trained_items", len(run.ids))
            note(f"{run_path} is a {run.spec['model']} run, which scores only the "
                 f"{counted(trained, 'item')} it was trained on: it neither recommends the added "
                 "items nor reads them in a history until a run is trained on its index "
                 f"(semid train recommender ... --index {run.index_path} --out NEW)")  # fmt: skip
        return added_summary(ids, new_keys, codes)

    def predictor(self, run: Run, device: str = "cpu") -> RecommendPredictor:
        """Top-k items for known users or for given histories."""
        return RecommendPredictor(run, device)


def describe_data(dataset: RecDataset, data: RecData) -> str:
    """One line on what training sees: users, items, events, and how many test targets repeat an
    item of their own history (ranking excludes seen items, so those are misses unless --keep-seen)."""
    s = data.split
    targets = data.positions("test")
    repeats = pd.DataFrame({"u": s.sequence_users.numpy(), "i": s.sequence_items.numpy()})
    repeated = int(repeats.duplicated().to_numpy()[targets.numpy()].sum())
    line = (f"data: {counted(len(dataset.user_keys), 'user')} ({counted(len(targets), 'test user')}), "
            f"{counted(len(dataset.item_keys), 'item')}, {counted(len(s.sequence_items), 'interaction')}")  # fmt: skip
    if repeated:
        line += (f"; {counted(repeated, 'test target')} {'repeats' if repeated == 1 else 'repeat'} "
                 "an item of the user's history (ranked only with `semid eval --keep-seen`)")  # fmt: skip
    return line


def training_window(model: nn.Module, max_history: int) -> int:
    """Targets per window of ``train_format = "sequence"`` training: the model's ``train_window``
    when it reads fewer items than ``max_history`` (TIGER's ``max_items``), else ``max_history``."""
    window = getattr(model, "train_window", None)
    return max_history if window is None else min(window, max_history)


def tune_item_mix(
    model: Generator, ids: SemanticIDs, data: RecData, spec: RecommendSpec
) -> tuple[dict[str, float], dict[str, float]]:
    """Set ``model.config.item_mix`` to the weight of ``MIX_GRID`` with the best valid NDCG@10
    (one beam search per query, every weight re-ranks its candidates); returns NDCG@10 by weight
    and the valid Recall/NDCG@5/10 at the chosen weight."""
    device = str(next(model.parameters()).device)
    ranker = HybridRanker(model, ids, spec.num_beams).to(device)
    parts: list[Candidates] = []

    class Recorder:  # ranks like the hybrid ranker and keeps the candidates
        def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
            parts.append(ranker.candidates(batch, k, seen))
            return parts[-1].top(0.0, k, ids)

    _, _, targets, _ = rank_split(Recorder(), data, "valid", 10, ids.codes, spec.max_history,
                                  max_users=spec.eval_users, device=device,
                                  desc="choose the item mix on valid users")  # fmt: skip
    model.config.item_mix, ndcg = choose_mix(parts, targets, ids)
    rows = torch.cat([c.top(model.config.item_mix, 10, ids).rows for c in parts])
    return ndcg, compute_metrics(rows, targets, ks=(5, 10))


def evaluate_ranker(
    ranker: Ranker,
    data: RecData,
    which: str = "valid",
    ks: Any = (5, 10),
    codes: Tensor | None = None,
    max_len: int = 50,
    batch_size: int = 256,
    max_users: int | None = None,
    exclude_seen: bool = True,
    device: str = "cpu",
    targets_in: Tensor | None = None,
) -> dict[str, float]:
    """Recall@k, NDCG@k, invalid-ID rate and queries/s over the valid or test targets
    (``targets_in`` (num_items,) bool: only the queries whose target row is marked, e.g. new items)."""
    users, ranking, targets, seconds = rank_split(
        ranker,
        data,
        which,
        max(ks),
        codes,
        max_len,
        batch_size,
        max_users,
        exclude_seen,
        device,
        targets_in,
    )
    metrics = compute_metrics(ranking.rows, targets, ks=ks, names=("recall", "ndcg"))
    metrics["queries_per_s"] = len(targets) / max(seconds, 1e-9)
    metrics["num_queries"] = len(targets)
    return metrics


def rank_split(
    ranker: Ranker, data: RecData, which: str, k: int, codes: Tensor | None = None,
    max_len: int = 50, batch_size: int = 256, max_users: int | None = None,
    exclude_seen: bool = True, device: str = "cpu", targets_in: Tensor | None = None,
    desc: str | None = None,
) -> tuple[Tensor, Ranking, Tensor, float]:  # fmt: skip
    """The ranking of every valid or test query: (users (Q,), Ranking, targets (Q,), seconds).

    ``max_users`` keeps a fixed, evenly spaced subset of users (cheap validation during training);
    ``targets_in`` (num_items,) bool keeps only the queries whose target row is marked; ``desc``
    labels the progress bar (default: "rank valid users")."""
    if batch_size < 1:
        raise SemidError(f"--batch-size must be >= 1, got {batch_size}")
    positions = data.positions(which)
    if targets_in is not None:
        positions = positions[targets_in[data.split.sequence_items[positions]]]
    positions = positions[subset_positions(len(positions), max_users)]
    if len(positions) == 0:
        raise SemidError(f"no {which} queries to evaluate (check the data slice)")
    dataset = TargetDataset(data, positions, max_len, with_seen=exclude_seen)
    collate = CodeCollator(dataset.collate, codes)
    # Answers go into tensors sized for every query at the first batch: thousands of small
    # per-batch parts kept between the large temporaries of scoring fragmented the heap (an
    # evaluation of 300,000 users over 60,000 items peaked at 12 GB)
    ranking: Ranking | None = None
    started = time.perf_counter()
    with torch.no_grad():
        for lo in batch_starts(len(dataset), batch_size, desc or f"rank {which} users"):
            batch = collate(positions[lo : lo + batch_size].tolist())
            seen = batch.pop("seen", None)
            batch.pop("targets")
            batch.pop("target_codes", None)
            part = ranker.rank(move(batch, device), k, seen)
            if ranking is None:
                ranking = Ranking.empty_like(part, len(positions))
            ranking.fill_(lo, part)
    seconds = time.perf_counter() - started
    users = data.split.sequence_users[positions]
    return users, ranking, data.split.sequence_items[positions], seconds


def get_task() -> RecommendTask:
    """The registered recommendation task."""
    return TASK


TASK = register_task(RecommendTask())
