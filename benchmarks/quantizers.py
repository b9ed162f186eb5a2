"""Quantizers at the same budget (3 levels x 256 codes) on MiniLM embeddings of MovieLens-1M items.

Compares any registered quantizer spec against two baselines measured in the same run:
faiss ``ResidualQuantizer(d, 3, 8)`` with its default training (progressive-dimension k-means,
beam 5), the same with ``max_beam_size=1`` (greedy), and plain per-level faiss k-means (Lloyd,
greedy). Reports fit time (median over
repetitions, one seed per repetition, methods interleaved), encode rate, reconstruction MSE,
collision rate before resolution, per-level perplexity and usage.

Run: python -m benchmarks.quantizers [--quantizers rqkmeans:3x256 ...] [--repeats 3]
(about 2 minutes for the default set on 2 busy CPU cores; --limit N for a smoke run)
"""

from __future__ import annotations

import os

# torch and faiss each bring an OpenMP runtime; with active waiting their idle threads spin and
# starve each other on a small machine (10x slower fits measured here). Set before they load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import semid  # noqa: E402
from benchmarks.results_files import command_line, cpu_description, write_result  # noqa: E402
from semid.collisions import collision_rate  # noqa: E402
from semid.ids import level_perplexity  # noqa: E402
from semid.quantization import build_quantizer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LEVELS, NBITS = 3, 8
FAISS_RQ = "faiss ResidualQuantizer(d, 3, 8)"
FAISS_RQ_GREEDY = "faiss ResidualQuantizer(d, 3, 8), max_beam_size=1"
FAISS_KMEANS = "faiss k-means per level"


@dataclass
class Fitted:
    """What one fitted method exposes: encode x (N, D) -> codes (N, L), decode codes -> (N, D)."""

    encode: Callable[[np.ndarray], np.ndarray]
    decode: Callable[[np.ndarray], np.ndarray]


def fit_semid(spec: str) -> Callable[[np.ndarray, int], Fitted]:
    """A fit function for a registered semid quantizer spec."""

    q0 = build_quantizer(spec)
    extra = {}
    if getattr(q0, "needs_interactions", False):  # graph_rqvae: the TRAINING graph, loaded once
        from semid.data import leave_one_out, load_dataset

        extra["interactions"] = leave_one_out(load_dataset("ml-1m").interactions).train

    def fit(x: np.ndarray, seed: int) -> Fitted:
        q = build_quantizer(spec).fit(torch.from_numpy(x), seed=seed, **extra)
        return Fitted(
            lambda a: q.encode(torch.from_numpy(a)).numpy(),
            lambda c: q.decode(torch.from_numpy(c)).numpy(),
        )

    return fit


def fit_faiss_rq(beam: int | None) -> Callable[[np.ndarray, int], Fitted]:
    """faiss ResidualQuantizer, default training or another beam width (train and encode)."""

    def fit(x: np.ndarray, seed: int) -> Fitted:
        rq = faiss.ResidualQuantizer(x.shape[1], LEVELS, NBITS)
        rq.cp.seed = seed
        if beam is not None:
            rq.max_beam_size = beam
        rq.train(x)
        return Fitted(  # 8-bit codes: one byte per level
            lambda a: rq.compute_codes(a).astype(np.int64),
            lambda c: rq.decode(np.ascontiguousarray(c.astype(np.uint8))),
        )

    return fit


def fit_faiss_kmeans(x: np.ndarray, seed: int) -> Fitted:
    """Greedy residual quantization with plain faiss k-means (Lloyd, random init) per level."""
    books, residual = [], x
    for level in range(LEVELS):
        km = faiss.Kmeans(x.shape[1], 2**NBITS, niter=20, seed=seed + level)
        km.train(residual)
        books.append(km.centroids.copy())
        residual = residual - km.centroids[km.index.search(residual, 1)[1][:, 0]]
    indexes = [faiss.IndexFlatL2(x.shape[1]) for _ in books]
    for index, book in zip(indexes, books, strict=True):
        index.add(book)

    def encode(a: np.ndarray) -> np.ndarray:
        codes = []
        for index, book in zip(indexes, books, strict=True):
            codes.append(index.search(a, 1)[1][:, 0])
            a = a - book[codes[-1]]
        return np.stack(codes, 1).astype(np.int64)

    return Fitted(encode, lambda c: sum(book[c[:, i]] for i, book in enumerate(books)))


def quality(x: np.ndarray, codes: np.ndarray, x_hat: np.ndarray, k: int) -> dict:
    """MSE, relative error, collision rate and per-level perplexity/usage of one encoding."""
    codes_t = torch.from_numpy(codes)
    return {
        "mse": float(((x - x_hat) ** 2).mean()),
        "relative_error": float(((x - x_hat) ** 2).sum() / (x**2).sum()),
        "collision_rate": collision_rate(codes_t),
        "perplexity": [round(level_perplexity(codes_t[:, i], k), 1) for i in range(codes.shape[1])],
        "usage": [round(len(np.unique(codes[:, i])) / k, 3) for i in range(codes.shape[1])],
    }


def run_once(fit: Callable[[np.ndarray, int], Fitted], x: np.ndarray, seed: int) -> dict:
    """Fit with `seed`, then time encoding the whole catalogue; returns timings and quality."""
    t = time.perf_counter()
    fitted = fit(x, seed)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    codes = fitted.encode(x)
    encode_s = time.perf_counter() - t
    assert codes.shape == (len(x), LEVELS), codes.shape
    return {
        "seed": seed,
        "fit_s": fit_s,
        "encode_s": encode_s,
        "load_1min": round(os.getloadavg()[0], 2),  # beside this run's timings
        **quality(x, codes, fitted.decode(codes), 2**NBITS),
    }


def summarize(runs: list[dict], n: int) -> dict:
    """Medians over repetitions (quality too: seeds differ), plus every repetition."""
    med = {
        key: statistics.median(r[key] for r in runs)
        for key in ("fit_s", "encode_s", "mse", "relative_error", "collision_rate")
    }
    return {
        **med,
        "encode_items_per_s": n / med["encode_s"],
        "perplexity": runs[0]["perplexity"],  # of seed 0; every run's are under "runs"
        "usage": runs[0]["usage"],
        "runs": runs,
    }


def load_embeddings(limit: int | None) -> tuple[np.ndarray, str]:
    """MiniLM embeddings (N, 384) of the ML-1M item texts (cached on disk by the encoder)."""
    from semid.data import load_dataset
    from semid.encoders import TextEncoder

    ds = load_dataset("ml-1m")
    texts = ds.item_texts[:limit] if limit else ds.item_texts
    x = TextEncoder().encode(texts, show_progress=False).numpy()
    return np.ascontiguousarray(
        x, dtype=np.float32
    ), f"ml-1m items ({len(texts)}), e.g. {texts[0]!r}"


def target_lines(report: dict) -> list[str]:
    """One line per semid spec, against the targets of its family.

    rqkmeans (issue 2): fit <= 1.2x faiss RQ's time at equal or lower MSE. Learned quantizers
    (issue 3): fewer collisions before resolution than rqkmeans at the same budget, and every
    level's perplexity >= 50% of its codebook size."""
    ref, lines = report["results"][FAISS_RQ], []
    kmeans_rows = [n for n in report["quantizers"] if n.startswith("rqkmeans:")]
    for name in report["quantizers"]:
        r = report["results"][name]
        if name.startswith("rqkmeans:"):
            t, m = r["fit_s"] / ref["fit_s"], r["mse"] / ref["mse"]
            met = "met" if t <= 1.2 and m <= 1.0 else "MISSED"
            lines.append(
                f"Target for `{name}` (fit <= 1.2x faiss RQ at MSE <= 1x): {met}, fit {t:.2f}x, MSE {m:.3f}x.  "
            )
            continue
        if not kmeans_rows:
            continue
        base = report["results"][kmeans_rows[0]]
        size = int(name.split(":")[1].split(",")[0].split("x")[1])
        fewer = r["collision_rate"] < base["collision_rate"]
        healthy = min(r["perplexity"]) >= 0.5 * size
        met = "met" if fewer and healthy else "MISSED"
        lines.append(
            f"Target for `{name}` (collisions < `{kmeans_rows[0]}`, every level's perplexity >= {size // 2}): {met}, "
            f"collisions {r['collision_rate']:.2%} vs {base['collision_rate']:.2%}, min perplexity {min(r['perplexity']):.0f}.  "
        )
    return [*lines, ""]


def fit_runs(runs: list[dict]) -> str:
    """Each run's fit time with the 1-minute load average after it ("-" for results written before
    runs kept their load)."""
    if any("load_1min" not in r for r in runs):
        return "-"
    return ", ".join(f"{r['fit_s']:.2f} @ {r['load_1min']:.1f}" for r in runs)


def markdown(report: dict) -> str:
    """The results as a Markdown table with the command, versions, machine and date."""
    rows = [
        "| method | fit s (median) | fit / faiss RQ | encode items/s | MSE (x1e-4) | MSE / faiss RQ | collisions | perplexity per level | usage per level | runs (fit s @ load) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report["results"][FAISS_RQ]
    for name, r in report["results"].items():
        rows.append(
            f"| `{name}` | {r['fit_s']:.2f} | {r['fit_s'] / ref['fit_s']:.2f} | {r['encode_items_per_s']:,.0f} "
            f"| {r['mse'] * 1e4:.3f} | {r['mse'] / ref['mse']:.3f} | {r['collision_rate']:.2%} "
            f"| {' / '.join(f'{p:.0f}' for p in r['perplexity'])} | {' / '.join(f'{u:.0%}' for u in r['usage'])} "
            f"| {fit_runs(r['runs'])} |"
        )
    env = report["environment"]
    return "\n".join(
        [
            "# Quantizers at 3 x 256 codes on MovieLens-1M item embeddings",
            "",
            f"Data: {report['data']}, MiniLM (all-MiniLM-L6-v2) embeddings, D = {report['dim']}. "
            f"Fit on all items, encode all items. {report['repeats']} repetitions with seeds "
            f"0..{report['repeats'] - 1}, methods interleaved; times and quality are medians. "
            "MSE is per coordinate; collisions = 1 - unique IDs / N before resolution; perplexity = "
            "exp(entropy) of code usage (256 = uniform).",
            "",
            *rows,
            "",
            *target_lines(report),
            f"Command: `{report['command']}`  ",
            f"Date: {report['date']}  ",
            f"Machine: {env['machine']}, torch threads {env['torch_threads']}, "
            f"faiss threads {env['faiss_threads']}, OMP_WAIT_POLICY={env['omp_wait_policy']}, "
            f"load average at start {env['load_average']}  ",
            f"Versions: python {env['python']}, torch {env['torch']}, faiss {env['faiss']}, "
            f"numpy {env['numpy']}, semid {env['semid']}",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every method `--repeats` times, write JSON and Markdown."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quantizers", nargs="+", default=["rqkmeans:3x256"], metavar="SPEC")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N items only (smoke runs)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for quantizers.json and quantizers.md (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    for spec in args.quantizers:
        q = build_quantizer(spec)  # fail early on a bad spec
        if q.codebook_sizes != [2**NBITS] * LEVELS:
            parser.error(f"{spec}: the comparison is at {LEVELS}x{2**NBITS}")

    x, data = load_embeddings(args.limit)
    if len(x) <= x.shape[1]:
        parser.error(f"--limit {args.limit}: faiss's PCA needs more items than the embeddings' "
                     f"{x.shape[1]} dimensions; give at least {x.shape[1] + 1}")  # fmt: skip
    methods = {spec: fit_semid(spec) for spec in args.quantizers}
    methods |= {
        FAISS_RQ: fit_faiss_rq(None),
        FAISS_RQ_GREEDY: fit_faiss_rq(1),
        FAISS_KMEANS: fit_faiss_kmeans,
    }
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    load, started = os.getloadavg(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    for seed in range(args.repeats):
        for name, fit in methods.items():
            runs[name].append(run_once(fit, x, seed))
            r = runs[name][-1]
            print(
                f"[{seed}] {name}: fit {r['fit_s']:.2f}s mse {r['mse']:.3e}",
                file=sys.stderr,
                flush=True,
            )
    report = {
        "command": command_line("quantizers", argv),
        "date": started,
        "data": data,
        "n": len(x),
        "dim": x.shape[1],
        "repeats": args.repeats,
        "quantizers": args.quantizers,
        "environment": {
            "machine": cpu_description(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": [round(v, 1) for v in load],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "semid": semid.__version__,
        },
        "results": {name: summarize(r, len(x)) for name, r in runs.items()},
    }
    write_result(args.out / "quantizers", report, markdown(report))


if __name__ == "__main__":
    main()
