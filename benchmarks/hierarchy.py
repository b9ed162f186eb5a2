"""HRQ against Euclidean residual quantization on WordNet hierarchies (issues 5 and 17).

Two evaluations, as in Piękos, Kayal & Karatzoglou (2025), both sides with the same code path
(``hrq``; the Euclidean side is curvature 0, where Möbius operations become + and -), the same
budget rule and the same parent-prediction model:

* supervised hierarchy modeling: the embedding network sees MiniLM vectors of each synset and is
  trained with the Nickel & Kiela ranking loss on the (descendant, ancestor) pairs of the training
  edges plus the quantization losses (``decoder=0``);
* hierarchy discovery: the quantizer sees only the MiniLM vectors (reconstruction loss, no edges).

Edges are split by child: 10% of the children with all their edges are the test set, 10% more the
validation set. Both the quantizer and the generator (`hierarchy_generator`) stop early on
validation losses (patience), so both sides train to convergence under the same rule; settings
are selected on validation Recall@10 (`hierarchy_sweep`), never on test edges. Each run also
scores how well the embeddings themselves hold the hierarchy before quantization: mean rank and
MAP of the training transitive closure (Nickel & Kiela's reconstruction protocol) under the
side's own distance (hyperbolic for HRQ, Euclidean for RQ), of the embeddings and of the
quantized points, and the same for the held-out test children against the full closure.

Datasets: ``mammals`` (the sweep's), ``animals`` (animal.n.01's subtree) and ``nouns`` (all 82,115
noun synsets; needs their MiniLM vectors, about 80 min to compute on 2 CPU cores, then cached).
Settings swept on mammals carry over except the codebook shape (each dataset keeps its own).

    python -m benchmarks.hierarchy_sweep --dataset mammals --seeds 0 1 2 --out DIR/sweep
    python -m benchmarks.hierarchy --datasets mammals --seeds 3 4 5 --best DIR/sweep.json --out DIR/mammals

(Without ``--out`` they write the committed ``benchmarks/results/hierarchy_sweep`` and
``benchmarks/results/hierarchy``, the merged mammals and animals table.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.hierarchy_generator import parent_metrics, train_generator
from semid.data.wordnet import WordNet, load_wordnet
from semid.determinism import plain_torchscript
from semid.encoders import TextEncoder
from semid.hierarchy import (
    EdgeSplit,
    closure_reconstruction,
    prefix_agreement,
    split_edges,
    transitive_closure,
)
from semid.ids import SemanticIDs
from semid.quantization import build_quantizer
from semid.quantizers import hyperbolic as hb

RESULTS = Path(__file__).parent / "results"
# Per dataset: default codebook shape, maximum quantizer epochs, batch and patience, the same for
# the generator, and how many nodes the closure reconstruction ranks (None: all).
SETTINGS = {
    "mammals": {
        "root": "mammal.n.01",
        "codes": "3x16",
        "q_epochs": 400,
        "q_batch": 256,
        "q_patience": 20,
        "g_epochs": 400,
        "g_batch": 128,
        "g_patience": 15,
        "rank_nodes": None,
    },
    "animals": {  # animal.n.01's subtree (4,017 synsets, mammals included): a mid-sized check
        "root": "animal.n.01",
        "codes": "3x32",
        "q_epochs": 500,
        "q_batch": 256,
        "q_patience": 10,
        "g_epochs": 200,
        "g_batch": 256,
        "g_patience": 10,
        "rank_nodes": None,
    },
    "nouns": {
        "root": None,
        "codes": "3x256",
        "q_epochs": 30,
        "q_batch": 512,
        "q_patience": 3,
        "g_epochs": 30,
        "g_batch": 512,
        "g_patience": 3,
        "rank_nodes": 2000,
    },
}
SIDES = {"HRQ": {"c": 1.0, "learn_c": 0}, "RQ": {"c": 0.0, "learn_c": 0}}
BASE = {"latent": 32, "lr": 1e-3, "codes": None, "net": "mlp"}  # codes None: the dataset's default
TASKS = {"supervised": 0, "discovery": 1}  # task -> decoder back to MiniLM space


@dataclass
class Fold:
    """One seed's edges: test and validation children held out, closure pairs for the loss."""

    test: EdgeSplit  # held-out children of split(all edges)
    val: EdgeSplit  # split(test.train): val children held out, val.train = training edges
    pairs: Tensor  # (P, 2) closure of the training edges
    val_pairs: Tensor  # (Q, 2) (val child, ancestor) pairs of the closure of test.train
    full_closure: Tensor  # (R, 2) closure of all edges (held-out reconstruction)


def make_fold(wn: WordNet, seed: int) -> Fold:
    """Split wn's edges for one seed: 10% test children, then 10% of all children for validation."""
    n = len(wn)
    test = split_edges(wn.edges, n, test_fraction=0.1, seed=seed)
    val = split_edges(test.train, n, test_fraction=1 / 9, seed=seed + 1000)
    closure = transitive_closure(test.train, n)
    return Fold(
        test=test,
        val=val,
        pairs=transitive_closure(val.train, n),
        val_pairs=closure[torch.isin(closure[:, 0], val.test_children)],
        full_closure=transitive_closure(wn.edges, n),
    )


def spec_of(config: dict, dataset: str, task: str) -> str:
    """The hrq spec string of a config (latent, codes, c, learn_c, net) for a dataset and task."""
    codes = config.get("codes") or SETTINGS[dataset]["codes"]
    return (
        f"hrq:{codes},latent={config['latent']},hidden=256,c={config['c']:g},"
        f"learn_c={config['learn_c']},decoder={TASKS[task]},net={config.get('net', 'mlp')}"
    )


@plain_torchscript()  # geoopt's distances round alike on every call (see semid.determinism)
def reconstruction(q: Any, x: Tensor, codes: Tensor, fold: Fold, sample: int | None) -> dict:
    """Closure mean rank / MAP of the embeddings and of the quantized points (own distance)."""
    distance = lambda a, b: hb.pairwise_distance(q.ball, a, b)  # noqa: E731
    embedded, quantized = q.embed(x), q.decode_latent(codes)
    nodes, held_nodes = None, fold.test.test_children
    if sample is not None:  # fixed random samples of nodes, the same for every run of a seed
        g = torch.Generator().manual_seed(0)
        nodes = torch.randperm(len(x), generator=g)[:sample]
        held_nodes = held_nodes[torch.randperm(len(held_nodes), generator=g)[:sample]]
    out = {}
    for name, points in (("embed", embedded), ("quant", quantized)):
        train = closure_reconstruction(points, fold.pairs, distance, nodes=nodes)
        held = closure_reconstruction(points, fold.full_closure, distance, nodes=held_nodes)
        out.update(
            {
                f"{name}_map": train["map"],
                f"{name}_mean_rank": train["mean_rank"],
                f"{name}_heldout_map": held["map"],
                f"{name}_heldout_mean_rank": held["mean_rank"],
            }
        )
    return out


def run_config(
    dataset: str, wn: WordNet, x: Tensor, fold: Fold, task: str, side: str, config: dict, seed: int
) -> dict:
    """Fit one quantizer config and its generator; one result row with metrics and curves."""
    cfg = SETTINGS[dataset]
    spec = spec_of(config, dataset, task)
    q = build_quantizer(spec)
    start = time.perf_counter()
    supervised = task == "supervised"
    q.fit(
        x,
        pairs=fold.pairs if supervised else None,
        val_pairs=fold.val_pairs if supervised else None,
        epochs=cfg["q_epochs"],
        batch_size=cfg["q_batch"],
        patience=cfg["q_patience"],
        lr=config["lr"],
        seed=seed,
        progress=len(x) > 10_000,  # the nouns' fits take minutes; mammals' and animals' seconds
    )
    fit_s = time.perf_counter() - start
    codes = q.encode(x)
    ids = SemanticIDs.from_codes(wn.names, codes, q.codebook_sizes, "extra-level")
    start = time.perf_counter()
    val_edges = fold.test.train[torch.isin(fold.test.train[:, 0], fold.val.test_children)]
    model, stopper, g_curve = train_generator(ids, fold.val.train, val_edges, cfg, seed)
    val = parent_metrics(model, ids, fold.val.test_children, fold.val.test_parents)
    row = {"dataset": dataset, "task": task, "side": side, "config": config, "spec": spec}
    row.update(seed=seed, val_recall10=val["recall@10"], val_mrr10=val["mrr@10"])
    row.update(parent_metrics(model, ids, fold.test.test_children, fold.test.test_parents))
    row.update(generator_s=time.perf_counter() - start, fit_s=fit_s)
    row.update(reconstruction(q, x, codes, fold, cfg["rank_nodes"]))
    for prefix in (1, 2):
        agree = prefix_agreement(codes, wn.edges, prefix=prefix, hops=3, seed=seed)
        row[f"prefix{prefix}_lift"] = agree["lift"]
    s = q.fit_summary
    row.update(
        collision_rate=ids.collision.collision_rate_before,
        c_final=s["c"],
        q_epochs=s["epochs"],
        q_best_epoch=s["best_epoch"],
        q_converged=s["stopped_early"],
        g_epochs=len(g_curve),
        g_best_epoch=stopper.best_epoch + 1,
        g_converged=stopper.stopped_early,
        curves={
            "q_train": s["train_loss"],
            "q_val": s["val_loss"],
            "g_train": g_curve,
            "g_val": stopper.history,
        },
    )
    return row


def load_data(dataset: str, log: Callable[[str], None]) -> tuple[WordNet, Tensor]:
    """The dataset's synsets and their MiniLM vectors (cached on disk by TextEncoder)."""
    wn = load_wordnet(root=SETTINGS[dataset]["root"])
    encoder, texts = TextEncoder(), wn.texts()
    if not encoder.is_cached(texts):  # nouns: about 80 min on 2 CPU cores, once
        log(f"{dataset}: embedding {len(texts):,} synsets with MiniLM (cached for the next runs)")
    x = encoder.encode(texts, show_progress=True)
    log(f"{dataset}: {len(wn)} synsets, {len(wn.edges)} edges, MiniLM {tuple(x.shape)}")
    return wn, x


def best_configs(sweep_path: str) -> dict[tuple[str, str], dict]:
    """(task, side) -> the config with the best validation Recall@10 in a sweep JSON."""
    return {
        (b["task"], b["side"]): b["config"]
        for b in json.loads(Path(sweep_path).read_text())["best"]
    }


def best_runs(sweep: dict) -> list[dict]:
    """The runs of a sweep JSON that used its best setting for their (task, side), every seed."""
    best = {(b["task"], b["side"]): b["config"] for b in sweep["best"]}
    return [r for r in sweep["runs"] if best.get((r["task"], r["side"])) == r["config"]]


def log_row(row: dict) -> None:
    """One result row as a JSON line on stderr, without its curves."""
    print(json.dumps({k: v for k, v in row.items() if k != "curves"}), file=sys.stderr, flush=True)


def add_max_epochs(parser: argparse.ArgumentParser) -> None:
    """The --max-epochs flag of the hierarchy benchmarks (read by `cap_epochs`)."""
    parser.add_argument(
        "--max-epochs", type=int,
        help="epoch cap of the quantizer and the generator (default: each dataset's, so that early "
        "stopping, not the cap, ends training); a small cap makes a quick check",
    )  # fmt: skip


def cap_epochs(
    parser: argparse.ArgumentParser, datasets: list[str], max_epochs: int | None
) -> None:
    """Cap the quantizer's and the generator's epochs of `datasets` at `max_epochs` (None: keep);
    a cap below 1 is the parser's error."""
    if max_epochs is None:
        return
    if max_epochs < 1:
        parser.error(f"--max-epochs must be >= 1, got {max_epochs}")
    for dataset in datasets:
        SETTINGS[dataset] = {**SETTINGS[dataset], "q_epochs": max_epochs, "g_epochs": max_epochs}


def main(argv: list[str] | None = None) -> None:
    """Run the best setting per (task, side) of a sweep for each seed; write out.{json,md,png}."""
    from benchmarks.hierarchy_report import run_meta, write_final

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["mammals"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--best", help="sweep JSON whose best configs to run (default: BASE)")
    parser.add_argument("--out", default=str(RESULTS / "hierarchy"),
                        help="results stem: STEM.json, STEM.md and STEM_curves.png (default: the "
                             "committed benchmarks/results/hierarchy, which it replaces)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    add_max_epochs(parser)
    parser.add_argument(
        "--from-sweep",
        help="write the tables from this sweep JSON's runs of its best settings; run nothing",
    )
    parser.add_argument(
        "--merge", nargs="+", help="combine earlier result JSONs into --out; run nothing"
    )
    args = parser.parse_args(argv)
    if args.from_sweep:
        sweep = json.loads(Path(args.from_sweep).read_text())
        write_final(args.out, best_runs(sweep), sweep["meta"])
        return
    if args.merge:
        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        write_final(
            args.out,
            [r for run in runs for r in run["runs"]],
            [m for run in runs for m in run["meta"]],
        )
        return
    torch.set_num_threads(args.threads)
    cap_epochs(parser, args.datasets, args.max_epochs)
    best = best_configs(args.best) if args.best else {}
    start, rows = time.perf_counter(), []
    for dataset in args.datasets:
        wn, x = load_data(dataset, lambda m: print(m, file=sys.stderr, flush=True))
        for seed in args.seeds:
            fold = make_fold(wn, seed)
            for task in args.tasks:
                for side in args.sides:
                    config = dict(best.get((task, side), {**BASE, **SIDES[side]}))
                    if dataset != "mammals":
                        config["codes"] = None  # the shape was swept on mammals only
                    rows.append(run_config(dataset, wn, x, fold, task, side, config, seed))
                    log_row(rows[-1])
    meta = run_meta(argv, args.threads, start, {d: SETTINGS[d] for d in args.datasets})
    write_final(args.out, rows, [meta])


if __name__ == "__main__":
    main()
