"""Results of the retrieval benchmark (benchmarks/retrieve.py): targets, JSON and Markdown tables."""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from semid.saving import versions

RESULTS = Path(__file__).parent / "results"
NOTES = (
    "Notes: queries/s counts search only. Dense and BM25 rows exclude query encoding (all texts are "
    "embedded once, the 'encode all' time); PromptDSI rows reuse the cached frozen lower encoder layers "
    "and include the prompted top layer(s), the decoder and trie-constrained beam search (10 beams). "
    "'train (s)' of PromptDSI excludes that shared encoding pass. D1-test has few queries: one query "
    "is worth 1/|D1-test| of recall. PromptDSI scores the rqkmeans levels of an ID by the distance "
    "between the query's residual and the quantizer's centroids (the centroid head, fixed buffers; "
    "learned per-level temperature) and the collision level by the decoder, normalised over the codes "
    "the trie allows there; 'PromptDSI untrained' is that model before any training. Training on D0 "
    "(prompts, decoder, temperatures) changes R@1 by about one query either way: the quality comes "
    "from the IDs and the centroid head, not from what the small decoder learns on ~1,600 examples."
)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (boolean flags only when set)."""
    parts = ["python -m benchmarks.retrieve"]
    for k, v in vars(args).items():
        if k in ("work", "out") or v is False:
            continue
        flag = f"--{k.replace('_', '-')}"
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's three quality targets, computed from the rows."""

    def get(method: str, corpus: str, part: str, key: str) -> float:
        return next(
            r[key]
            for r in rows
            if r["method"] == method and r["corpus"] == corpus and r["queries"] == part
        )

    r1, dense = (
        get("PromptDSI (D0)", "D0", "D0-test", "recall@1"),
        get("dense MiniLM", "D0", "D0-test", "recall@1"),
    )
    inc = "PromptDSI incremental (+D1)"
    before, after = (
        get("PromptDSI (D0)", "D0", "D0-test", "recall@10"),
        get(inc, "D0+D1", "D0-test", "recall@10"),
    )
    new, full = (
        get(inc, "D0+D1", "D1-test", "recall@10"),
        get("full retrain (D0+D1)", "D0+D1", "D1-test", "recall@10"),
    )
    ratio = new / full if full else float("inf")
    return [
        "Targets (issue 6):",
        "",
        f"- PromptDSI R@1 >= dense on D0-test: {r1:.3f} vs {dense:.3f}: "
        + ("met" if r1 >= dense else "missed"),
        f"- D0-test R@10 drop after adding D1 incrementally <= 2 points: {before:.3f} -> {after:.3f} "
        f"({100 * (before - after):+.1f} points drop): "
        + ("met" if before - after <= 0.02 else "missed"),
        f"- D1-test R@10 incremental >= 0.9x full retrain: {new:.3f} vs {full:.3f} ({ratio:.2f}x): "
        + ("met" if ratio >= 0.9 else "missed"),
    ]


def write_results(args, rows, coll, corpus, split, ids0, ids_all) -> None:
    """benchmarks/results/<out>.json and .md."""
    meta = {
        "command": command_line(args),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, shared 2-core CPU",
        "versions": versions(),
        "corpus": {
            "name": corpus.name,
            "sha256": corpus.sha256,
            "documents": len(corpus),
            "subset": len(coll),
            "seed": args.seed,
        },
        "split": {
            k: len(getattr(split, k))
            for k in ("d0", "d1", "d0_train", "d0_test", "d1_train", "d1_test")
        },
        "index": {
            "d0": ids0.stats(),
            "d0+d1_items": len(ids_all),
            "codebook_sizes_after_add": ids_all.codebook_sizes,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Document retrieval: debian-docs subset",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + "  ",
        f"Corpus: pinned debian-docs (sha256 {corpus.sha256[:12]}, {len(corpus):,} documents), seeded subset of "
        f"{len(coll):,} documents (seed {args.seed}); D0 {len(split.d0):,} docs ({len(split.d0_test):,} test queries), "
        f"D1 {len(split.d1):,} docs ({len(split.d1_test):,} test queries). Semantic IDs: {args.quantizer} fitted on D0, "
        f"extra level for collisions, D1 IDs from the saved quantizer. Single training run per row; times are wall clock "
        "on a shared CPU (±20%).",
        "",
        "| method | corpus | queries | R@1 | R@10 | MRR@10 | train (s) | queries/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        train = r.get("train_s", r.get("index_s", r.get("encode_s")))
        note = "" if "train_s" in r else (" (index)" if "index_s" in r else " (encode all)")
        lines.append(
            f"| {r['method']} | {r['corpus']} | {r['queries']} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
            f"{r['mrr@10']:.3f} | {train:.0f}{note} | {r.get('queries_per_s', 0):.0f} |"
        )
    lines += ["", *target_lines(rows), "", NOTES]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

