"""SASRec and MMGRec training throughput on the CPU, before 2026-12-02 (torch's dropout, MMGRec's
(B, T, T) relation biases through ``F.embedding``, SASRec scoring padded positions too) against
the default since (bit dropout on activations and attention weights, ``gather_rows``, SASRec
scoring only positions with a next item), on ml-100k with 50- and 200-item histories.

Measures targets/s of whole optimizer steps (collation, forward, backward, Adam, clipping) of the
default configs as the recommend task builds them (MMGRec's distance relation reaching the
history length), one torch thread, 3 repeats, medians, the load average beside each. The IDs are
TIGER's recipe (rqkmeans:3x256 on MiniLM text embeddings): step cost does not depend on which
codes the items get. Writes benchmarks/results/sequence-throughput.{json,md}.
Run: python -m benchmarks.sequence_throughput
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import semid.generators.mmgrec as mmgrec_module
from benchmarks.results_files import run_header, write_result
from benchmarks.tiger_throughput import format_runs, tiger_index, train_steps
from semid.data.registry import load_dataset
from semid.data.sequences import CodeCollator, SequenceDataset, prepare_data
from semid.dropout import use_torch_dropout
from semid.generators.sasrec import SASRec
from semid.models import is_generator, model_class

RESULTS = Path(__file__).parent / "results"
MODELS = {"sasrec": {}, "mmgrec": {}}
VARIANTS = ("before", "default")


@contextlib.contextmanager
def torch_lookups() -> Iterator[None]:
    """Inside the block, MMGRec's ``gather_rows`` is ``F.embedding`` again (the lookups before)."""
    fast = mmgrec_module.gather_rows
    mmgrec_module.gather_rows = lambda weight, index: F.embedding(index, weight)
    try:
        yield
    finally:
        mmgrec_module.gather_rows = fast


class PaddedSASRec(SASRec):
    """SASRec as it trained before 2026-12-02: every position scored, padding included."""

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy at every position with a next item, logits (B, T, N) of all positions."""
        logits = self.scores(self.encode(batch["items"]))
        target = batch["next_items"][:, -logits.shape[1] :]
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1)
        return loss, logits


def make_model(name: str, ids: Any, history: int, seed: int, before: bool = False) -> Any:
    """A default model of family ``name`` sized as the recommend task sizes it (``before``: SASRec
    scoring padding too, and torch's dropout modules)."""
    torch.manual_seed(seed)
    cls = PaddedSASRec if before and name == "sasrec" else model_class(name)
    model = cls(cls.sized_for(cls.config_class(), ids, max_history=history))
    if is_generator(model):
        model.use_trie(ids.trie(model.codebook_sizes))
    if before:
        use_torch_dropout(model)
    return model


def throughput(
    name: str, data: Any, ids: Any, history: int, before: bool, args: Any
) -> dict[str, Any]:
    """targets/s of ``args.steps`` optimizer steps after one warm-up; median of 3 repeats."""
    model = make_model(name, ids, history, args.seed, before)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = SequenceDataset(data, history)
    g = torch.Generator().manual_seed(args.seed)
    collate = CodeCollator(dataset.collate, ids.codes if is_generator(model) else None)
    batches = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, generator=g, collate_fn=collate
    )
    runs = []
    with torch_lookups() if before else contextlib.nullcontext():
        train_steps(model, batches, opt, 1, None)
        for _ in range(3):
            seen, seconds = train_steps(model, batches, opt, args.steps, None)
            load = os.getloadavg()[0]
            runs.append(
                {"targets_per_s": seen / seconds, "seconds": seconds, "load_average_1min": load}
            )
            print(f"[{name}] history {history}, {VARIANTS[not before]}: {seen / seconds:,.0f} "
                  f"targets/s (load {load:.2f})", flush=True)  # fmt: skip
    return {"runs": runs, "targets_per_s": statistics.median(r["targets_per_s"] for r in runs)}


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table with the command and environment."""
    lines = [
        "# SASRec and MMGRec training throughput (ml-100k, CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {os.cpu_count()} CPUs, torch threads 1, torch {torch.__version__}; "
        f"load average {result['load_start']:.1f} at start, {result['load_end']:.1f} at end.  ",
        f"Whole optimizer steps of the default configs, batch {result['batch_size']} windows, "
        f"{result['steps']} steps per repeat, 3 repeats, medians. Before: torch's dropout, MMGRec's "
        "relation biases through `F.embedding`, SASRec scoring padded positions too; default: bit "
        "dropout on activations and attention weights, `gather_rows`, SASRec scoring only positions "
        "with a next item.",
        "",
        "| model | history | before: targets/s | default: targets/s | speed-up | runs before / default (targets/s @ load) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        b, d = r["before"], r["default"]
        runs = f"{format_runs(b['runs'])} / {format_runs(d['runs'])}"
        lines.append(f"| {r['model']} | {r['history']} | {b['targets_per_s']:,.0f} | "
                     f"{d['targets_per_s']:,.0f} | {d['targets_per_s'] / b['targets_per_s']:.2f}x | {runs} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, then write sequence-throughput.{json,md} under ``--out``."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=64, help="windows per step (the task default)")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per repeat")
    p.add_argument("--histories", type=int, nargs="+", default=[50, 200])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for sequence-throughput.json and sequence-throughput.md (default: benchmarks/results)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    dataset = load_dataset("ml-100k")
    ids = tiger_index(dataset, args.seed)
    rows = []
    for history in args.histories:
        data = prepare_data(dataset, ids, history)
        for name in args.models:
            before = throughput(name, data, ids, history, True, args)
            default = throughput(name, data, ids, history, False, args)
            rows.append({"model": name, "history": history, "before": before, "default": default})
    result = {
        **run_header("sequence_throughput", argv, load_start), "steps": args.steps,
        "batch_size": args.batch_size, "rows": rows,
    }  # fmt: skip
    write_result(args.out / "sequence-throughput", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
