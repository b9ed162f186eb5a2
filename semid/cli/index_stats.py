"""`semid index stats`: the health report of a semantic-ID index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semid.cli.table import format_table
from semid.manifest import MANIFEST, PARTS

EXAMPLE = "semid index stats runs/ml-1m/index --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid index stats`."""
    p.add_argument(
        "index", help="index folder written by `semid index build`, or a run folder (its index)"
    )
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw the codebook usage, one histogram per level"
    )


def _share_lost(share: Any) -> str:
    """The reconstruction error as the index stats show it ("-" where it was not measured)."""
    if not isinstance(share, int | float) or isinstance(share, bool):
        return "-"
    return f"{share:.4f} (share of the built items' spread their IDs lose)"


def format_stats(stats: dict) -> str:
    """Human-readable report of SemanticIDs.stats()."""
    head = [
        ("items", stats["items"]),
        ("quantizer", stats["quantizer"] or "-"),
        ("levels x codes", " x ".join(map(str, stats["codebook_sizes"]))),
        ("collision strategy", stats["collision_strategy"] or "-"),
        ("collision rate before", f"{stats['collision_rate_before']:.4f}"),
        ("collision rate after", f"{stats['collision_rate_after']:.4f}"),
        ("max items per ID before", stats["max_items_per_id_before"]),
        ("items moved", stats["items_moved"]),
        ("reconstruction error", _share_lost(stats.get("reconstruction_error"))),
    ]
    width = max(len(k) for k, _ in head)
    lines = [f"{k.ljust(width)}  {v}" for k, v in head]
    rows = [
        [
            lv["level"],
            lv["codebook_size"],
            lv["used"],
            lv["usage"],
            lv["perplexity"],
            lv["perplexity"] / lv["codebook_size"],
        ]
        for lv in stats["per_level"]
    ]
    table = format_table(
        ["level", "codes", "used", "usage", "perplexity", "perplexity/codes"], rows
    )
    return "\n".join(lines) + "\n\n" + table


def run(args: argparse.Namespace) -> int:
    """Load the index and print its stats."""
    from semid.ids import SemanticIDs

    index = Path(args.index)
    if (index / MANIFEST).is_file():  # a run: the index inside it
        index = index / PARTS["index"]
    ids = SemanticIDs.load(index)
    if args.plot:  # refused before the stats are printed
        from semid.plots import check_plot_path

        check_plot_path(args.plot)
    stats = ids.stats()
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    if args.plot:
        from semid.plots import plot_code_usage

        plot_code_usage(ids, args.plot)
    return 0
