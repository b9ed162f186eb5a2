"""Peak memory and step time of a full-catalogue softmax in training: one piece against chunks.

SASRec's loss and MMGRec's item head score every training position against every item. This
measures whole optimizer steps (forward, backward, Adam) of the default SASRec and MMGRec (item
head on, 3x256 IDs) on 64 windows of 50 random items, at catalogues of 3,706 (MovieLens-1M's),
30,000 and 100,000 items,
with the (R, N) logits made in one piece (what every step did before) and a chunk at a time
(:func:`semid.item_softmax.item_cross_entropy`, the default past 2**23 logits). Each case runs in a
fresh process, since peak resident memory (``ru_maxrss``) only grows; 3 repeats, medians, the load
average beside each. The histories are random: memory and time per step do not depend on which
items a history holds. Writes benchmarks/results/item-softmax.{json,md}.
Run: python -m benchmarks.item_softmax
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import semid.item_softmax
from benchmarks.results_files import run_header, write_result
from semid.models import build_model

RESULTS = Path(__file__).parent / "results"
MODES = ("one piece", "chunked")
ONE_PIECE = 1 << 62  # a chunk limit no problem reaches


def measure_case(
    model_name: str, items: int, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Peak resident MiB and the median step time of ``args.steps`` optimizer steps, in this process."""
    torch.set_num_threads(args.threads)
    semid.item_softmax.LOGIT_CHUNK_FLOATS = ONE_PIECE if mode == "one piece" else args.chunk_floats
    torch.manual_seed(args.seed)
    history = torch.randint(0, items, (args.batch_size, args.history))
    following = torch.randint(0, items, (args.batch_size, args.history))
    batch: dict[str, torch.Tensor] = {"items": history, "next_items": following}
    if model_name == "sasrec":
        model = build_model("sasrec", {"num_items": items, "max_len": args.history})
    else:
        codes = torch.randint(0, 256, (items, 3))
        model = build_model("mmgrec", {"codebook_sizes": [256] * 3, "num_items": items})
        batch |= {"history_codes": codes[history], "next_codes": codes[following],
                  "times": torch.arange(args.history).repeat(args.batch_size, 1)}  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = []
    for _ in range(args.steps):
        began = time.perf_counter()
        loss = model(batch)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - began)
    return {
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_steps_mib": start_mib, "step_s": statistics.median(seconds),
        "load_average_1min": os.getloadavg()[0],
    }  # fmt: skip


def run_case(model_name: str, items: int, mode: str, argv: list[str]) -> dict[str, Any]:
    """:func:`measure_case` in a fresh process (peak memory is per process)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.item_softmax",
        *argv,
        "--case",
        model_name,
        str(items),
        mode,
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if out.returncode:
        reason = (out.stderr.strip().splitlines() or ["no error output"])[-1]
        sys.exit(f"benchmarks.item_softmax: the case {model_name} {items} {mode} failed: {reason}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table with the command and environment."""
    lines = [
        "# Full-catalogue softmax in training: one piece against chunks (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {os.cpu_count()} CPUs, torch threads {result['threads']}, torch "
        f"{torch.__version__}; load average {result['load_start']:.1f} at start, "
        f"{result['load_end']:.1f} at end.  ",
        f"Whole optimizer steps of the default SASRec and MMGRec (item head on, 3x256 IDs), "
        f"{result['batch_size']} windows of {result['history']} random items, {result['steps']} steps "
        f"per process, {result['reps']} processes per case, medians. Chunks of "
        f"{result['chunk_floats']:,} logits. Peak: resident memory of the whole process "
        "(`ru_maxrss`, imports and model included).",
        "",
        "| model | items | peak MiB, one piece | peak MiB, chunked | step s, one piece | step s, chunked | runs one piece / chunked (MiB, s @ load) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        whole, chunked = row["one piece"], row["chunked"]
        runs = " / ".join(
            ", ".join(
                f"{r['peak_mib']:.0f}, {r['step_s']:.2f} @ {r['load_average_1min']:.1f}"
                for r in side["runs"]
            )
            for side in (whole, chunked)
        )
        lines.append(f"| {row['model']} | {row['items']:,} | {whole['peak_mib']:.0f} | {chunked['peak_mib']:.0f} | "
                     f"{whole['step_s']:.2f} | {chunked['step_s']:.2f} | {runs} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--items", type=int, nargs="+", default=[3_706, 30_000, 100_000], help="catalogue sizes"
    )
    p.add_argument(
        "--models", nargs="+", default=["sasrec", "mmgrec"], choices=["sasrec", "mmgrec"]
    )
    p.add_argument("--batch-size", type=int, default=64, help="windows per step (the task default)")
    p.add_argument("--history", type=int, default=50, help="items per window (the task default)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per process")
    p.add_argument("--reps", type=int, default=3, help="processes per case")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--chunk-floats", type=int, default=semid.item_softmax.LOGIT_CHUNK_FLOATS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for item-softmax.json and item-softmax.md (default: benchmarks/results)",
    )
    p.add_argument("--case", nargs=3, metavar=("MODEL", "ITEMS", "MODE"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Measure every case in fresh processes, then write item-softmax.{json,md} under ``--out``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    for flag in ("batch_size", "history", "steps", "reps", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if min(args.items) < 1:
        p.error(f"--items must be >= 1, got {min(args.items)}")
    if args.case:
        model_name, items, mode = args.case
        print(json.dumps(measure_case(model_name, int(items), mode, args)))
        return None
    load_start = os.getloadavg()[0]
    rows = []
    for items in args.items:
        for model_name in args.models:
            row: dict[str, Any] = {"model": model_name, "items": items}
            for mode in MODES:
                runs = [run_case(model_name, items, mode, argv) for _ in range(args.reps)]
                print(f"[item_softmax] {model_name}, {items:,} items, {mode}: median step "
                      f"{statistics.median(r['step_s'] for r in runs):.3f} s, peak "
                      f"{statistics.median(r['peak_mib'] for r in runs):.0f} MiB over {len(runs)} "
                      f"process(es) (load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
                row[mode] = {
                    "runs": runs,
                    **{
                        key: statistics.median(r[key] for r in runs)
                        for key in ("peak_mib", "step_s")
                    },
                }
            rows.append(row)
    result = {
        **run_header("item_softmax", argv, load_start), "threads": args.threads,
        "batch_size": args.batch_size, "history": args.history, "steps": args.steps, "reps": args.reps,
        "chunk_floats": args.chunk_floats, "rows": rows,
    }  # fmt: skip
    write_result(args.out / "item-softmax", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
