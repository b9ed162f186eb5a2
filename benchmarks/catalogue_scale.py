"""Catalogue scale: where generative retrieval becomes cheaper than scoring every item.

For catalogues of 1e4 .. 1e7 random unique 3x256 IDs and a batch of 64 queries (histories of 20
items), one query encoder (a small randomly initialised MMGRec, dim 64) feeds three searches:
  - beam:  MMGRec's trie-constrained beam search, 20 beams, top 10 (cost ~ beams x codebook);
  - full:  SASRec-style full scoring, query vectors (64, 64) @ item table (N, 64), then torch.topk;
  - faiss: exact inner product (IndexFlatIP) over the same item table.
Each (method, N) runs in a fresh process: queries/s (median of 3 repeats, load average beside each)
and the peak resident memory the search adds (VmHWM after resetting it, minus VmRSS before), next
to the index's own bytes. Writes benchmarks/results/catalogue-scale.{json,md}.
Run: python -m benchmarks.catalogue_scale [--sizes 10000 100000 1000000 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import torch

from benchmarks.results_files import run_header, write_result
from semid.models import build_model
from semid.trie import PrefixTrie

RESULTS = Path(__file__).parent / "results"
SIZES = [256, 256, 256]
METHODS = ("beam", "full", "faiss")
BATCH, HISTORY, BEAMS, K, DIM = 64, 20, 20, 10, 64


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    """n unique random IDs (n, 3) over 3x256."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(256**3, generator=g)[:n]
    return torch.stack([flat // 65536, flat // 256 % 256, flat % 256], dim=1)


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_one(method: str, n: int, repeats: int) -> dict[str, Any]:
    """Build one method's index over n items, then time searches of 64 queries; in this process."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mmgrec", {"codebook_sizes": SIZES, "dim": DIM}).eval()
    ids = random_ids(n)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, n, (BATCH, HISTORY), generator=g)
    batch = {"history_codes": ids[rows], "times": torch.arange(HISTORY).repeat(BATCH, 1) * 3600}
    started = time.perf_counter()
    if method == "beam":
        trie = PrefixTrie.from_codes(ids, SIZES)
        index_bytes = trie.nbytes
    else:
        table = torch.randn(n, DIM, generator=g)  # an item embedding table, as SASRec learns
        index_bytes = table.numel() * 4
        if method == "faiss":
            index = faiss.IndexFlatIP(DIM)
            index.add(table.numpy())
            del table
    build_s = time.perf_counter() - started

    @torch.no_grad()
    def search() -> torch.Tensor:
        if method == "beam":
            return model.generate(batch, trie, num_beams=BEAMS, top_k=K)[0]
        query = model.encode(batch["history_codes"], batch["times"])[:, -1]  # (B, D)
        if method == "full":
            return (query @ table.T).topk(K, dim=1).indices
        return torch.from_numpy(index.search(query.numpy(), K)[1])

    search()  # warm-up
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        search()
        runs.append(
            {
                "queries_per_s": BATCH / (time.perf_counter() - t),
                "load_average_1min": os.getloadavg()[0],
            }
        )
    peak_extra = (_status_kib("VmHWM") - rss_before) * 1024
    return {
        "method": method, "num_items": n, "build_s": build_s, "index_bytes": index_bytes,
        "search_peak_extra_bytes": peak_extra, "rss_bytes": rss_before * 1024, "runs": runs,
        "queries_per_s": statistics.median(r["queries_per_s"] for r in runs),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """Results as a Markdown table with the command and environment."""
    mib = 2**20
    lines = [
        "# Catalogue scale: generative retrieval vs full scoring",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {os.cpu_count()} CPUs (shared), 1 torch thread, torch {torch.__version__}, "
        f"faiss {faiss.__version__}; load average {result['load_start']:.1f} at start, "
        f"{result['load_end']:.1f} at end.  ",
        f"Batch of {BATCH} queries (histories of {HISTORY} items), one random MMGRec encoder (dim {DIM}) "
        f"for all; beam: trie-constrained beam search, {BEAMS} beams, top {K}; full: query @ item table "
        f"(N, {DIM}) + torch.topk; faiss: IndexFlatIP. Queries/s are medians of {result.get('repeats', 3)} repeats; "
        "search memory is the peak RSS a batch adds after one warm-up batch (buffers the allocator kept "
        "from the warm-up are not counted again: beam search's are small and reused, hence ~0 MiB, while "
        "the (64, N) score matrix of full scoring is mapped afresh each time). The full-scoring side "
        "needs the item table resident (index MiB); the beam side needs the trie.",
        "",
        "| items | method | queries/s | index MiB | search peak + MiB | build s | runs (q/s @ load) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['num_items']:,} | {r['method']} | {r['error']} | | | | |")
            continue
        runs = ", ".join(
            f"{x['queries_per_s']:,.0f} @ {x['load_average_1min']:.1f}" for x in r["runs"]
        )
        lines.append(
            f"| {r['num_items']:,} | {r['method']} | {r['queries_per_s']:,.0f} | {r['index_bytes'] / mib:,.1f} | "
            f"{r['search_peak_extra_bytes'] / mib:,.1f} | {r['build_s']:.2f} | {runs} |"
        )
    lines += ["", "## Where beam search is cheaper", ""]
    for line in result["crossover"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def crossover(rows: list[dict[str, Any]]) -> list[str]:
    """Per catalogue size: how beam search's queries/s compares with the fastest full scorer."""
    out = []
    for n in sorted({r["num_items"] for r in rows}):
        at = {r["method"]: r for r in rows if r["num_items"] == n and "error" not in r}
        if "beam" not in at or len(at) < 2:
            continue
        best = max((m for m in at if m != "beam"), key=lambda m: at[m]["queries_per_s"])
        ratio = at["beam"]["queries_per_s"] / at[best]["queries_per_s"]
        verdict = "beam search is faster" if ratio > 1 else "full scoring is faster"
        out.append(f"{n:,} items: beam / {best} = {ratio:.2f}x queries/s ({verdict})")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (method, size) in its own process, then write the JSON and Markdown results."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for catalogue-scale.json and catalogue-scale.md (default: benchmarks/results)",
    )
    args = p.parse_args(argv)
    if args.repeats < 1 or min(args.sizes) < 1:
        p.error(f"--repeats and --sizes must be >= 1, got {args.repeats} and {min(args.sizes)}")
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.repeats)))
        return {}
    load_start, rows = os.getloadavg()[0], []
    for n in args.sizes:
        for method in args.methods:
            cmd = [sys.executable, "-m", "benchmarks.catalogue_scale", "--one", method, str(n),
                   "--repeats", str(args.repeats)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["failed"])[-1][:120]
                rows.append({"method": method, "num_items": n, "error": error})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            qps = rows[-1].get("queries_per_s")
            said = f"{qps:,.1f} queries/s" if qps is not None else f"failed: {rows[-1]['error']}"
            load = "/".join(f"{v:.2f}" for v in os.getloadavg())
            print(
                f"[catalogue] {n:,} {method}: {said} (load average 1/5/15 min {load})", flush=True
            )
    result = {
        **run_header("catalogue_scale", argv, load_start), "repeats": args.repeats, "rows": rows,
        "crossover": crossover(rows),
    }  # fmt: skip
    write_result(args.out / "catalogue-scale", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
