"""TIGER training throughput: one encoder pass per target (bidirectional, ``causal=False``) vs one
pass per history window (causal encoder, the default), on ml-100k with TIGER's index recipe
(rqkmeans:3x256 on MiniLM text embeddings, extra-level collisions).

Measures targets/s of whole optimizer steps (collation, forward, backward, Adam) at the same batch
size, 3 repeats, medians, the load average beside each; the window model also without dropout and
without attention-probability dropout (the cost of dropout's random numbers). ``--train-seconds S``
then trains both variants for the same wall-clock budget and reports test Recall@10 / NDCG@10
(20 beams, seen items excluded). Writes benchmarks/results/tiger-throughput.{json,md}.
Run: python -m benchmarks.tiger_throughput [--train-seconds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import semid.quantizers  # noqa: F401  (registers the quantizer families)
from benchmarks.results_files import run_header, write_result
from semid.data.registry import load_dataset
from semid.data.sequences import CodeCollator, SequenceDataset, TargetDataset, prepare_data
from semid.dropout import use_torch_dropout
from semid.encoders import TextEncoder
from semid.ids import SemanticIDs
from semid.indexing import build_ids
from semid.models import build_model
from semid.ranking import ranker_for
from semid.tasks.recommend import evaluate_ranker, training_window
from semid.trie import PrefixTrie

RESULTS = Path(__file__).parent / "results"
HISTORY = 50  # the task's default max_history


@dataclass(frozen=True)
class Variant:
    """A TIGER training set-up: config overrides, batch format, targets per window (None: the
    task's rule, ``training_window``) and whether T5 keeps torch's own dropout modules."""

    overrides: dict[str, Any]
    fmt: str = "sequence"
    window: int | None = None
    torch_dropout: bool = False


VARIANTS = {
    "per-target (bidirectional, before)": Variant(
        {"causal": False, "attention_dropout": None}, "target", torch_dropout=True
    ),
    "window of 50 cut into 20-item chunks, torch dropout (default until 2026-12-01)": Variant(
        {"causal": True}, window=HISTORY, torch_dropout=True
    ),
    "window (causal, default: 20-target windows, bit dropout)": Variant({"causal": True}),
    "window (causal), attention dropout 0.1 as in T5": Variant(
        {"causal": True, "attention_dropout": None}
    ),
    "window (causal), no dropout": Variant({"causal": True, "dropout": 0.0}),
}
DEFAULT = "window (causal, default: 20-target windows, bit dropout)"


def tiger_index(dataset: Any, seed: int = 0) -> SemanticIDs:
    """TIGER's recipe: rqkmeans:3x256 on MiniLM text embeddings, extra-level collisions."""
    x = TextEncoder().encode(dataset.item_texts, show_progress=False)
    return build_ids(list(dataset.item_keys), x, "rqkmeans:3x256", "extra-level", seed)[0]


def make_model(ids: SemanticIDs, variant: Variant, seed: int) -> Any:
    """A TIGER with the default config plus the variant's overrides, its softmax over the index's
    trie (and torch's dropout modules back in place of BitDropout if the variant asks)."""
    torch.manual_seed(seed)
    model = build_model("tiger", {**variant.overrides, "codebook_sizes": list(ids.codebook_sizes)})
    model.use_trie(PrefixTrie.from_codes(ids.codes, model.codebook_sizes))
    if variant.torch_dropout:
        use_torch_dropout(model)
    return model


def batches_for(data: Any, ids: SemanticIDs, model: Any, variant: Variant, batch_size: int,
                seed: int) -> DataLoader:  # fmt: skip
    """The variant's training batches (its window, or the task's rule for the model)."""
    window = variant.window or training_window(model, HISTORY)
    return loader(data, ids, variant.fmt, batch_size, seed, window)


def loader(
    data: Any, ids: SemanticIDs, fmt: str, batch_size: int, seed: int, window: int = 50
) -> DataLoader:
    """Shuffled training batches: one target per example, or whole windows of ``window`` targets."""
    if fmt == "sequence":
        ds = SequenceDataset(data, window)
    else:
        ds = TargetDataset(data, data.positions("train"), 50)
    g = torch.Generator().manual_seed(seed)
    collate = CodeCollator(ds.collate, ids.codes)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate)


def targets_in(batch: dict[str, torch.Tensor]) -> int:
    """Training targets in a batch (window batches: positions with a history and a next item)."""
    if "next_codes" in batch:
        return int(
            ((batch["next_codes"][..., 0] >= 0) & (batch["history_codes"][..., 0] >= 0)).sum()
        )
    if "next_items" in batch:  # a scorer's windows (SASRec): index rows, PAD = -1
        return int(((batch["next_items"] >= 0) & (batch["items"] >= 0)).sum())
    return len(batch["target_codes"])


def train_steps(
    model: Any, batches: Any, opt: torch.optim.Optimizer, steps: int | None, seconds: float | None
) -> tuple[int, float]:
    """Optimizer steps until ``steps`` or ``seconds`` run out -> (targets seen, seconds)."""
    model.train()
    seen, started, done = 0, time.perf_counter(), 0
    while True:
        for batch in batches:
            loss, _ = model(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen, done = seen + targets_in(batch), done + 1
            elapsed = time.perf_counter() - started
            if (steps is not None and done >= steps) or (
                seconds is not None and elapsed >= seconds
            ):
                return seen, elapsed


def throughput(data: Any, ids: SemanticIDs, variant: Variant, batch_size: int, steps: int,
               repeats: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """targets/s of ``steps`` optimizer steps after one warm-up step; median of ``repeats``."""
    model = make_model(ids, variant, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = batches_for(data, ids, model, variant, batch_size, seed)
    train_steps(model, batches, opt, 1, None)
    runs = []
    for _ in range(repeats):
        seen, seconds = train_steps(model, batches, opt, steps, None)
        runs.append({"targets_per_s": seen / seconds, "targets": seen, "seconds": seconds,
                     "load_average_1min": os.getloadavg()[0]})  # fmt: skip
        print(f"[tiger] {variant} batch {batch_size}: {seen / seconds:,.0f} targets/s "
              f"(load {os.getloadavg()})", flush=True)  # fmt: skip
    return {"runs": runs, "targets_per_s": statistics.median(r["targets_per_s"] for r in runs)}


def quality(data: Any, ids: SemanticIDs, variant: Variant, batch_size: int, seconds: float,
            seed: int) -> dict[str, Any]:  # fmt: skip
    """Train for ``seconds`` of wall time, then test Recall/NDCG@10 with 20 beams."""
    model = make_model(ids, variant, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = batches_for(data, ids, model, variant, batch_size, seed)
    seen, spent = train_steps(model, batches, opt, None, seconds)
    metrics = evaluate_ranker(ranker_for(model, ids, 20), data, "test", codes=ids.codes, max_len=50)
    epochs = seen / len(data.positions("train"))
    return {"train_seconds": spent, "targets_seen": seen, "epochs": epochs, **metrics,
            "load_average_1min": os.getloadavg()[0]}  # fmt: skip


def format_runs(runs: list[dict[str, Any]]) -> str:
    """Repeats as "targets/s @ load average", comma-separated."""
    return ", ".join(f"{x['targets_per_s']:,.0f} @ {x['load_average_1min']:.1f}" for x in runs)


def markdown(result: dict[str, Any]) -> str:
    """Results as Markdown tables, with the command and environment."""
    lines = [
        "# TIGER training throughput (ml-100k)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {os.cpu_count()} CPUs (shared), torch threads 1, torch {torch.__version__}; "
        f"load average {result['load_start']:.1f} at start, {result['load_end']:.1f} at end.  ",
        "Whole optimizer steps (collation, forward, backward, Adam, clipping) of the default TIGER "
        f"config; {result['steps']} steps per repeat, 3 repeats, medians.",
        "",
        "| variant | batch (examples) | targets/s (median) | x per-target | runs (targets/s @ load) |",
        "|---|---|---|---|---|",
    ]
    base = result["throughput"][0]["targets_per_s"]
    for r in result["throughput"]:
        runs = format_runs(r["runs"])
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['targets_per_s']:,.0f} | "
                     f"{r['targets_per_s'] / base:.1f}x | {runs} |")  # fmt: skip
    if result.get("quality"):
        lines += ["", f"## Same wall-clock budget ({result['train_seconds']} s each), test split, 20 beams", "",
                  "| variant | batch | epochs | R@10 | N@10 | R@5 | load at end |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["quality"]:
            lines.append(f"| {r['variant']} | {r['batch_size']} | {r['epochs']:.2f} | {r['recall@10']:.4f} | "
                         f"{r['ndcg@10']:.4f} | {r['recall@5']:.4f} | {r['load_average_1min']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, then write benchmarks/results/tiger-throughput.{json,md}."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=128, help="examples per step, both variants")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per repeat")
    p.add_argument(
        "--window-batch-sizes", type=int, nargs="*", default=[32], help="extra window batch sizes"
    )
    p.add_argument(
        "--train-seconds", type=float, default=0, help="> 0: R@10 after this much training each"
    )
    p.add_argument(
        "--quality-batch-sizes", type=int, nargs=2, default=[128, 64], help="per-target, window"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for tiger-throughput.json and tiger-throughput.md (default: benchmarks/results)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    dataset = load_dataset("ml-100k")
    ids = tiger_index(dataset, args.seed)
    data = prepare_data(dataset, ids, 50)
    rows = []
    for name, variant in VARIANTS.items():
        sizes = [args.batch_size] + (args.window_batch_sizes if name == DEFAULT else [])
        for bs in sizes:
            r = throughput(data, ids, variant, bs, args.steps, 3, args.seed)
            rows.append({"variant": name, "batch_size": bs, **r})
    quality_rows = []
    if args.train_seconds > 0:
        chosen = ["per-target (bidirectional, before)", DEFAULT]
        for name, bs in zip(chosen, args.quality_batch_sizes, strict=True):
            q = quality(data, ids, VARIANTS[name], bs, args.train_seconds, args.seed)
            print(f"[tiger] {name}: R@10 {q['recall@10']:.4f} after {q['epochs']:.2f} epochs "
                  f"(load {os.getloadavg()})", flush=True)  # fmt: skip
            quality_rows.append({"variant": name, "batch_size": bs, **q})
    result = {
        **run_header("tiger_throughput", argv, load_start), "steps": args.steps,
        "train_seconds": args.train_seconds, "throughput": rows, "quality": quality_rows,
    }  # fmt: skip
    write_result(args.out / "tiger-throughput", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
