"""HRQ against Euclidean residual quantization on the WordNet noun hierarchy (issue 5).

Two evaluations, as in Piękos, Kayal & Karatzoglou (2025), every quantizer at the same budget
(levels x codes, latent size, epochs, batch) and followed by the same parent-prediction model:

* supervised hierarchy modeling: the embedding network sees MiniLM vectors of each synset and is
  trained with the Nickel & Kiela ranking loss on the (descendant, ancestor) pairs of the
  *training* edges plus the quantization losses (``decoder=0``);
* hierarchy discovery: the quantizer sees only the MiniLM vectors (reconstruction loss, no edges).

Downstream, a small GRU generator learns child ID -> parent ID on the training edges and is scored
on held-out children (all their hypernym edges removed) by trie-constrained beam search:
Recall@1/10 and MRR@10. Discovery also reports prefix agreement: the share of item pairs sharing
the first (or first two) codes that have a common ancestor within 3 hops, against random pairs.

The Euclidean side is the same ``hrq`` code at curvature 0 (Möbius operations become + and -), and
for discovery also the project's ``rqvae`` and ``rqkmeans``.

    python -m benchmarks.hierarchy --datasets mammals nouns --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from semid.atomic import atomic_file, write_json
from semid.beam_search import constrained_beam_search
from semid.data.wordnet import load_wordnet
from semid.encoders import TextEncoder
from semid.hierarchy import prefix_agreement, split_edges, transitive_closure
from semid.ids import SemanticIDs
from semid.metrics import compute_metrics
from semid.quantization import build_quantizer

RESULTS = Path(__file__).parent / "results"
# Per dataset: codebook budget, quantizer epochs and batch, generator epochs and batch.
SETTINGS = {
    "mammals": {
        "root": "mammal.n.01",
        "codes": "3x16",
        "q_epochs": 100,
        "q_batch": 256,
        "g_epochs": 60,
        "g_batch": 128,
    },
    "nouns": {
        "root": None,
        "codes": "3x256",
        "q_epochs": 10,
        "q_batch": 512,
        "g_epochs": 8,
        "g_batch": 512,
    },
}
COMMON = "latent=32,hidden=256"


# Task -> whether the quantizer decodes back to MiniLM space; "supervised+recon" adds the
# reconstruction loss to the hierarchy loss (the supervised task with the VAE-style variant).
TASKS = {"supervised": 0, "discovery": 1, "supervised+recon": 1}


def methods(curvatures: list[float], tasks: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    """Task -> [(method name, family, spec options)]: HRQ per curvature, then the Euclidean baselines."""
    out = {}
    for task in tasks:
        decoder = TASKS[task]
        rows = [(f"HRQ c={c:g}", "hrq", f"c={c:g},decoder={decoder}") for c in curvatures]
        rows.append(("RQ (hrq c=0)", "hrq", f"c=0.0,decoder={decoder}"))
        if task == "discovery":
            rows += [("RQ-VAE (rqvae)", "rqvae", ""), ("RQ k-means (rqkmeans)", "rqkmeans", "")]
        out[task] = rows
    return out


class ParentPredictor(nn.Module):
    """Child ID (B, L) -> parent ID, one level per step: a context MLP then a GRU over parent codes."""

    def __init__(self, sizes: list[int], dim: int = 128) -> None:
        super().__init__()
        self.sizes = sizes
        self.src = nn.ModuleList(nn.Embedding(k, dim) for k in sizes)
        self.context = nn.Sequential(
            nn.Linear(len(sizes) * dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.prev = nn.ModuleList(nn.Embedding(k, dim) for k in sizes[:-1])
        self.cell = nn.GRUCell(dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in sizes)

    def start(self, child: Tensor) -> tuple[Tensor, Tensor]:
        """First-level logits (B, V_0) and the hidden state (B, dim) for child IDs (B, L)."""
        h = self.context(torch.cat([emb(child[:, i]) for i, emb in enumerate(self.src)], -1))
        return self.heads[0](h), h

    def step(self, state: Tensor, codes: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Logits (R, V_level) after feeding the codes (R,) chosen at level - 1."""
        h = self.cell(self.prev[level - 1](codes), state)
        return self.heads[level](h), h

    def select(self, state: Tensor, rows: Tensor) -> Tensor:
        """State rows reordered or expanded: (R_new, dim)."""
        return state[rows]

    def loss(self, child: Tensor, parent: Tensor) -> Tensor:
        """Teacher-forced cross-entropy summed over levels for ID pairs (B, L)."""
        logits, h = self.start(child)
        total = nn.functional.cross_entropy(logits, parent[:, 0])
        for level in range(1, len(self.sizes)):
            logits, h = self.step(h, parent[:, level - 1], level)
            total = total + nn.functional.cross_entropy(logits, parent[:, level])
        return total


def parent_prediction(
    ids: SemanticIDs, split, epochs: int, batch: int, seed: int
) -> dict[str, float]:
    """Train ParentPredictor on split.train edges and score held-out children by beam search."""
    torch.manual_seed(seed)
    model = ParentPredictor(ids.codebook_sizes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    child, parent = ids.codes[split.train[:, 0]], ids.codes[split.train[:, 1]]
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(child), generator=gen).split(batch):
            loss = model.loss(child[idx], parent[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    trie = ids.trie()
    ranked = []
    with torch.no_grad():
        for rows in split.test_children.split(1024):
            out = constrained_beam_search(model, ids.codes[rows], trie, num_beams=10, top_k=10)
            ranked.append(ids.rows_of_codes(out.codes))
    targets = split.test_parents
    num_relevant = (targets >= 0).sum(1)
    metrics = compute_metrics(
        torch.cat(ranked), targets, ks=(1, 10), names=("recall", "mrr"), num_relevant=num_relevant
    )
    return {k: metrics[k] for k in ("recall@1", "recall@10", "mrr@10")}


def fit_quantizer(family: str, spec: str, x: Tensor, pairs: Tensor | None, cfg: dict, seed: int):
    """Fit one quantizer at the dataset's budget; returns it and the seconds it took."""
    q = build_quantizer(spec)
    start = time.perf_counter()
    if family == "hrq":
        q.fit(
            x,
            pairs=pairs,
            epochs=cfg["q_epochs"],
            batch_size=cfg["q_batch"],
            seed=seed,
            progress=False,
        )
    elif family == "rqvae":  # same epochs and batch; no early stop, so the same number of steps
        q.fit(
            x,
            epochs=cfg["q_epochs"],
            batch_size=cfg["q_batch"],
            patience=cfg["q_epochs"],
            seed=seed,
            progress=False,
        )
    else:
        q.fit(x, seed=seed)
    return q, time.perf_counter() - start


def run_dataset(
    name: str, seeds: list[int], curvatures: list[float], tasks: list[str], families: list[str], log
) -> list[dict]:
    """Every method of both tasks on one dataset, for each seed; one row per (task, method, seed)."""
    cfg = SETTINGS[name]
    wn = load_wordnet(root=cfg["root"])
    x = TextEncoder().encode(wn.texts(), show_progress=False)
    log(f"{name}: {len(wn)} synsets, {len(wn.edges)} edges, MiniLM {tuple(x.shape)}")
    rows = []
    for seed in seeds:
        split = split_edges(wn.edges, len(wn), test_fraction=0.1, seed=seed)
        pairs = transitive_closure(split.train, len(wn))
        for task, task_methods in methods(curvatures, tasks).items():
            for method, family, opts in task_methods:
                if family not in families:
                    continue
                budget = cfg["codes"]
                spec = f"{family}:{budget}" + (
                    f",{COMMON},{opts}"
                    if family == "hrq"
                    else f",{COMMON}"
                    if family == "rqvae"
                    else ""
                )
                q, fit_s = fit_quantizer(
                    family, spec, x, pairs if task.startswith("supervised") else None, cfg, seed
                )
                codes = q.encode(x)
                ids = SemanticIDs.from_codes(wn.names, codes, q.codebook_sizes, "extra-level")
                start = time.perf_counter()
                row = {"dataset": name, "task": task, "method": method, "spec": spec, "seed": seed}
                row.update(parent_prediction(ids, split, cfg["g_epochs"], cfg["g_batch"], seed))
                for prefix in (1, 2):
                    agree = prefix_agreement(codes, wn.edges, prefix=prefix, hops=3, seed=seed)
                    row[f"prefix{prefix}_shared"], row[f"prefix{prefix}_lift"] = (
                        agree["shared"],
                        agree["lift"],
                    )
                    row["chance"] = agree["chance"]
                row.update(
                    collision_rate=ids.collision.collision_rate_before,
                    max_per_id=ids.collision.max_items_per_id_before,
                    fit_s=fit_s,
                    generator_s=time.perf_counter() - start,
                )
                rows.append(row)
                log(json.dumps(row))
    return rows


METRICS = [
    "recall@1",
    "recall@10",
    "mrr@10",
    "prefix1_lift",
    "prefix2_lift",
    "collision_rate",
    "fit_s",
]


def summarise(rows: list[dict]) -> list[dict]:
    """Median over seeds per (dataset, task, method), with Recall@10 relative to the hrq c=0 row."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["task"], r["method"]), []).append(r)
    out = []
    for (dataset, task, method), rs in groups.items():
        s = {
            "dataset": dataset,
            "task": task,
            "method": method,
            "spec": rs[0]["spec"],
            "seeds": len(rs),
        }
        s.update({m: statistics.median(r[m] for r in rs) for m in METRICS})
        s["chance"] = statistics.median(r["chance"] for r in rs)
        out.append(s)
    for s in out:
        base = next(
            b
            for b in out
            if (b["dataset"], b["task"], b["method"]) == (s["dataset"], s["task"], "RQ (hrq c=0)")
        )
        s["r10_vs_rq"] = (
            s["recall@10"] / base["recall@10"] if base["recall@10"] > 0 else float("nan")
        )
    return out


def markdown(summary: list[dict], metas: list[dict]) -> str:
    """The results table with the commands, versions, machine and date of every run in it."""
    lines = ["# Hierarchy benchmark: HRQ vs Euclidean RQ on WordNet nouns", ""]
    for meta in metas:
        lines += [
            f"Command: `{meta['command']}`  ",
            f"Date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}, geoopt {meta['geoopt']}; "
            f"wall time {meta['wall_s'] / 60:.1f} min; seeds {meta['seeds']}; settings `{json.dumps(meta['settings'])}`.",
            "",
        ]
    lines += [
        f"Medians over seeds; shared spec options `{COMMON}`.",
        "Parent prediction on held-out children (10% of synsets with a hypernym, all their edges removed "
        "from training and from the hierarchy loss); trie-constrained beam search, 10 beams. Prefix lift: "
        "P(common ancestor within 3 hops | same first k codes) / P(same | random pair).",
        "",
        "| dataset | task | method | R@1 | R@10 | MRR@10 | R@10 vs RQ | prefix-1 lift | prefix-2 lift | collisions | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['task']} | {s['method']} | {s['recall@1']:.4f} | {s['recall@10']:.4f} | "
            f"{s['mrr@10']:.4f} | {s['r10_vs_rq']:.2f}x | {s['prefix1_lift']:.2f} | {s['prefix2_lift']:.2f} | "
            f"{s['collision_rate']:.3f} | {s['fit_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write benchmarks/results/hierarchy.{json,md}."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["mammals", "nouns"], choices=sorted(SETTINGS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", default=str(RESULTS / "hierarchy"), help="output path without extension"
    )
    parser.add_argument(
        "--curvatures", nargs="+", type=float, default=[1.0], help="HRQ curvatures to run"
    )
    parser.add_argument(
        "--tasks", nargs="+", default=["supervised", "discovery"], choices=list(TASKS)
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=["hrq", "rqvae", "rqkmeans"],
        help="quantizer families to run",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--merge", nargs="+", help="combine earlier result JSONs into --out; run nothing"
    )
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        metas = [
            m for r in runs for m in (r["meta"] if isinstance(r["meta"], list) else [r["meta"]])
        ]
        write_results(args.out, [row for r in runs for row in r["runs"]], metas)
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.datasets:
        rows += run_dataset(
            name,
            args.seeds,
            args.curvatures,
            args.tasks,
            args.families,
            lambda m: print(m, file=sys.stderr, flush=True),
        )
    import geoopt

    meta = {
        "command": "python -m benchmarks.hierarchy "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.platform()}",
        "torch": torch.__version__,
        "geoopt": geoopt.__version__,
        "seeds": args.seeds,
        "settings": {n: SETTINGS[n] for n in args.datasets},
        "wall_s": time.perf_counter() - start,
    }
    write_results(args.out, rows, [meta])


def write_results(out: str, rows: list[dict], metas: list[dict]) -> None:
    """Write out.json (runs, medians, metadata) and out.md (the table), atomically."""
    summary = summarise(rows)
    write_json(f"{out}.json", {"meta": metas, "summary": summary, "runs": rows})
    with atomic_file(f"{out}.md") as f:
        f.write(markdown(summary, metas))
    print(markdown(summary, metas))


if __name__ == "__main__":
    main()
