"""Training step time of PromptDSI: prompted encoder layers over the whole padded batch against
the short texts padded apart (CPU).

A retrieval run trains on documents mixed with queries (DSI's indexing and retrieval examples),
so a batch pads a query of a dozen tokens to its longest document's hundred and more. This
measures whole optimizer steps (forward, backward, Adam) of the default PromptDSI (the packaged
MiniLM, prompt_layer 0) on the same batches of real debian-docs documents and their queries, mixed
at random as the task mixes them, with the prompted layers run over the whole padded batch (what
every step did before) and with the short rows run padded to their own length
(``PromptDSI._run_layers_by_length``, the default). Both modes in one process, alternating, 3
repeats, medians, the load average beside each. Writes benchmarks/results/promptdsi-step.{json,md}.
Run: python -m benchmarks.promptdsi_step
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.results_files import run_header, write_result
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.generators.promptdsi_states import encode_texts, pad_states, select_states

RESULTS = Path(__file__).parent / "results"
MODES = ("whole batch", "short rows apart")


def training_batches(model: PromptDSI, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """``args.batches`` batches of ``args.batch_size`` examples drawn at random from the first
    ``args.docs`` documents of ``args.dataset`` and their queries, as the task's collate makes
    them (padded states and sentence embeddings), with random target codes."""
    from semid.tasks.retrieval_data import load_collection

    documents = load_collection(args.dataset).documents[: args.docs]
    queries = [q for d in documents for q in d.queries]
    texts = encode_texts(model, [d.text for d in documents] + queries, cache=False)
    rng = random.Random(args.seed)
    sizes = model.config.codebook_sizes
    batches = []
    for _ in range(args.batches):
        rows = rng.sample(range(len(texts.states)), args.batch_size)
        batch = pad_states(select_states(texts.states, rows))
        batch["embedding"] = texts.embeddings[rows]  # cached with the states, as in the task
        batch["target_codes"] = torch.stack(
            [torch.tensor([rng.randrange(k) for k in sizes]) for _ in rows]
        )
        batches.append(batch)
    return batches


def step_seconds(model: PromptDSI, batches: list[dict[str, torch.Tensor]], mode: str) -> float:
    """Median seconds of an optimizer step over ``batches`` with ``mode``'s prompted layers."""
    run = PromptDSI._run_layers if mode == "whole batch" else PromptDSI._run_layers_by_length
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    seconds = []
    original = PromptDSI._run_layers_by_length
    PromptDSI._run_layers_by_length = run  # type: ignore[method-assign]
    try:
        for batch in batches:
            began = time.perf_counter()
            loss, _ = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - began)
    finally:
        PromptDSI._run_layers_by_length = original  # type: ignore[method-assign]
    return statistics.median(seconds)


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table with the command and environment."""
    whole, apart = (result[mode] for mode in MODES)
    runs = ", ".join(
        f"{r['whole batch']:.2f} / {r['short rows apart']:.2f} @ {r['load_average_1min']:.1f}"
        for r in result["runs"]
    )
    return "\n".join([
        "# PromptDSI training step: the whole padded batch against short rows apart (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {os.cpu_count()} CPUs, torch threads {result['threads']}, torch "
        f"{torch.__version__}; load average {result['load_start']:.1f} at start, "
        f"{result['load_end']:.1f} at end.  ",
        f"Whole optimizer steps of the default PromptDSI (packaged MiniLM, prompt_layer 0) on "
        f"{result['batches']} batches of {result['batch_size']} examples drawn from the first "
        f"{result['docs']} {result['dataset']} documents and their queries "
        f"({result['real_tokens']:.0%} of a padded batch's tokens are text), "
        f"{result['reps']} repeats, medians.",
        "",
        "| step s, whole batch | step s, short rows apart | speed-up | runs whole / apart (s @ load) |",
        "|---|---|---|---|",
        f"| {whole:.2f} | {apart:.2f} | {whole / apart:.2f}x | {runs} |",
    ]) + "\n"  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="debian-docs", help="a document collection with queries")
    p.add_argument("--docs", type=int, default=600, help="documents to draw examples from")
    p.add_argument("--batch-size", type=int, default=32, help="the task's default")
    p.add_argument("--batches", type=int, default=8, help="steps per mode and repeat")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for promptdsi-step.json and promptdsi-step.md (default: benchmarks/results)",
    )
    return p


def main(argv: list[str] | None = None, config: PromptDSIConfig | None = None) -> dict[str, Any]:
    """Measure both modes on the same batches, then write promptdsi-step.{json,md} under ``--out``
    (``config``: another model, for tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    model = PromptDSI(config or PromptDSIConfig())
    batches = training_batches(model, args)
    masks = torch.cat([b["attention_mask"].flatten() for b in batches]).float()
    runs = []
    for rep in range(args.reps):
        order = MODES if rep % 2 == 0 else MODES[::-1]  # neither mode always runs first
        run = {mode: step_seconds(model, batches, mode) for mode in order}
        runs.append({**run, "load_average_1min": os.getloadavg()[0]})
    result = {
        **run_header("promptdsi_step", argv, load_start), "threads": args.threads,
        "dataset": args.dataset, "docs": args.docs, "batch_size": args.batch_size,
        "batches": args.batches, "reps": args.reps, "real_tokens": float(masks.mean()),
        "runs": runs, **{mode: statistics.median(r[mode] for r in runs) for mode in MODES},
    }  # fmt: skip
    write_result(args.out / "promptdsi-step", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
