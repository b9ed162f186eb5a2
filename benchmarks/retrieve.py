"""Document retrieval on debian-docs: PromptDSI against BM25 and dense MiniLM, then adding D1 three ways.

    python -m benchmarks.retrieve --docs 1000

Protocol (issue 6): a seeded subset of the pinned corpus is split 90% D0 / 10% D1; 20% of each
part's synopses are test queries (their documents are indexed, their queries never trained on).
Rows: BM25 and dense (faiss exact inner product over the same frozen MiniLM vectors) on the D0
corpus and on D0+D1; PromptDSI trained on D0; then D1 added by PromptDSI incremental indexing
(new prompts only), naive fine-tuning on D1 (prompts + decoder, no D0 data), and a full retrain
on D0+D1. Every method sees the same subset, split and semantic IDs.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from semid.data.corpus import split_corpus, subset_rows
from semid.data.debian_docs import load_debian_docs
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.generators.promptdsi_states import (
    centroid_codebooks,
    encode_texts,
    pad_states,
    set_key_center,
    topic_keys,
)
from semid.indexing import build_ids
from semid.metrics import compute_metrics
from semid.ranking import Ranking, ranker_for
from semid.saving import versions
from semid.tasks.retrieve import dsi_examples
from semid.training import TrainConfig
from semid.training import train_model as fit_model

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


class BM25:
    """Okapi BM25 (k1, b; Lucene idf) over lowercase word tokens, scored with one sparse product."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.vocab: dict[str, int] = {}
        tf = self._counts(texts, grow=True)
        n = tf.shape[0]
        dl = np.asarray(tf.sum(1)).ravel()
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        tf = tf.tocoo()
        denom = tf.data + k1 * (1 - b + b * dl[tf.row] / dl.mean())
        w = idf[tf.col] * tf.data * (k1 + 1) / denom
        self.weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape).T.tocsr()  # (V, N)

    def _counts(self, texts: list[str], grow: bool) -> sp.csr_matrix:
        rows, cols = [], []
        for i, t in enumerate(texts):
            for tok in re.findall(r"\w+", t.lower()):
                j = self.vocab.setdefault(tok, len(self.vocab)) if grow else self.vocab.get(tok)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        shape = (len(texts), len(self.vocab))
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)

    def search(self, queries: list[str], k: int) -> torch.Tensor:
        """Top-k document rows (Q, k)."""
        q = self._counts(queries, grow=False)
        q.data[:] = 1.0  # each query term counts once, as in bm25s
        scores = torch.from_numpy((q @ self.weights).toarray())
        return scores.topk(k, dim=1).indices


def dense_search(doc_emb: torch.Tensor, query_emb: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k rows (Q, k) by exact inner product (faiss IndexFlatIP)."""
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb.numpy()))
    return torch.from_numpy(index.search(np.ascontiguousarray(query_emb.numpy()), k)[1]).long()


def retrieval_metrics(ranked: torch.Tensor, targets: torch.Tensor, ks, seconds: float) -> dict:
    """Recall@k and MRR@k of ranked rows (Q, k_max) against target rows (Q,), plus queries/s."""
    metrics = compute_metrics(ranked, targets, ks=ks, names=("recall", "mrr"))
    return {**metrics, "num_queries": float(len(targets)), "queries_per_s": len(targets) / max(seconds, 1e-9)}


def train_model(model, examples, out_dir, config):
    """Fit a PromptDSI on DSI examples with the shared loop (best weights loaded)."""
    return fit_model(model, examples, config, out_dir, collate_fn=examples.collate)


def timed(fn):
    """(result, seconds) of fn()."""
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--docs", type=int, default=1000, help="seeded subset of the pinned corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantizer", default="rqkmeans:2x256")
    p.add_argument(
        "--centroid-levels",
        type=int,
        default=-1,
        help="ID levels also scored by the rqkmeans centroids (-1: all quantizer levels, 0: none)",
    )
    p.add_argument(
        "--decoder-on-centroid-levels",
        action="store_true",
        help="add the decoder's learned logits at centroid levels too (default: only after them)",
    )
    p.add_argument("--prompt-layer", type=int, default=5)
    p.add_argument("--topics", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--d-model", type=int, default=128, help="decoder width")
    p.add_argument(
        "--epochs", type=int, default=5, help="PromptDSI epochs on D0 (and for the full retrain)"
    )
    p.add_argument("--add-epochs", type=int, default=6, help="epochs on D1 (incremental and naive)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--prompt-lr", type=float, default=1e-2, help="learning rate of incremental prompt training"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/semid-bench-retrieve"))
    p.add_argument("--out", default="retrieve")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ks = (1, 10)
    corpus = load_debian_docs()
    coll = corpus.subset(subset_rows(len(corpus), args.docs, args.seed))
    split = split_corpus(len(coll), args.seed)
    docs_text, queries_text = coll.texts, [d.queries[0] for d in coll.documents]

    books: torch.Tensor | None = None  # rqkmeans codebooks for the centroid head, set below

    def new_model(sizes: list[int]) -> PromptDSI:
        torch.manual_seed(args.seed)
        levels = 0 if books is None else len(books)
        cfg = PromptDSIConfig(
            codebook_sizes=sizes,
            prompt_layer=args.prompt_layer,
            pool_sizes=[args.topics],
            max_length=args.max_length,
            d_model=args.d_model,
            d_ff=4 * args.d_model,
            centroid_levels=levels,
            decoder_on_centroid_levels=args.decoder_on_centroid_levels,
        )
        model = PromptDSI(cfg)
        if levels:
            model.set_centroids_(books)
        return model

    probe = new_model([2])
    (doc_enc, query_enc), encode_s = timed(
        lambda: (
            encode_texts(probe, docs_text, desc="encode docs"),
            encode_texts(probe, queries_text, desc="encode queries"),
        )
    )
    rows: list[dict] = []

    def row(method: str, corpus_name: str, part: str, metrics: dict, **extra) -> None:
        rows.append(
            {
                "method": method,
                "corpus": corpus_name,
                "queries": part,
                **{k: round(v, 4) for k, v in metrics.items()},
                **extra,
            }
        )
        print(rows[-1], flush=True)

    # ---- baselines, on the D0 corpus and on D0 + D1; rows are positions in `corpus_rows`
    bm25_s = {}
    for corpus_name, corpus_rows in (("D0", split.d0), ("D0+D1", torch.cat([split.d0, split.d1]))):
        pos = {int(r): i for i, r in enumerate(corpus_rows)}
        bm25, bm25_s[corpus_name] = timed(
            lambda cr=corpus_rows: BM25([docs_text[int(r)] for r in cr])
        )
        for part, qrows in (("D0-test", split.d0_test), ("D1-test", split.d1_test)):
            if corpus_name == "D0" and part == "D1-test":
                continue
            targets = torch.tensor([pos[int(r)] for r in qrows])
            ranked, s = timed(
                lambda qr=qrows, b=bm25: b.search([queries_text[int(r)] for r in qr], max(ks))
            )
            row(
                "BM25",
                corpus_name,
                part,
                retrieval_metrics(ranked, targets, ks, s),
                index_s=bm25_s[corpus_name],
            )
            ranked, s = timed(
                lambda qr=qrows, cr=corpus_rows: dense_search(
                    doc_enc.embeddings[cr], query_enc.embeddings[qr], max(ks)
                )
            )
            row(
                "dense MiniLM",
                corpus_name,
                part,
                retrieval_metrics(ranked, targets, ks, s),
                encode_s=encode_s,
            )

    # ---- semantic IDs: quantizer fitted on D0, D1 added with the saved quantizer (as `index add`)
    keys = coll.ids
    ids0, quantizer = build_ids(
        [keys[int(r)] for r in split.d0],
        doc_enc.embeddings[split.d0],
        args.quantizer,
        seed=args.seed,
    )
    ids_all = copy.deepcopy(ids0)
    ids_all.add(
        [keys[int(r)] for r in split.d1],
        quantizer.encode(doc_enc.embeddings[split.d1]),
    )
    extra = max(8, ids_all.codebook_sizes[-1] - ids0.codebook_sizes[-1])
    sizes = PromptDSI.sized_for(PromptDSIConfig(), ids0, extra_codes=extra).codebook_sizes
    books = centroid_codebooks(quantizer, doc_enc.embeddings.shape[1])
    if books is not None and args.centroid_levels >= 0:
        books = books[: args.centroid_levels] if args.centroid_levels else None
    trie0, trie_all = ids0.trie(sizes), ids_all.trie(sizes)
    row_of = {
        int(r): i for i, r in enumerate(torch.cat([split.d0, split.d1]))
    }  # ids_all row of a coll row

    def targets(qrows):
        return torch.tensor([row_of[int(r)] for r in qrows])

    def train_cfg(epochs: int, lr: float) -> TrainConfig:
        return TrainConfig(
            max_epochs=epochs,
            lr=lr,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=10**6,
            keep_checkpoints=1,
            early_stopping_patience=None,
            mixed_precision="no",
            warmup_steps=20,
        )

    def fresh(name: str) -> Path:
        shutil.rmtree(args.work / name, ignore_errors=True)
        return args.work / name

    def examples(doc_rows, query_rows):
        return dsi_examples(
            doc_enc.rows(doc_rows),
            targets(doc_rows),
            query_enc.rows(query_rows),
            targets(query_rows),
            ids_all.codes,
        )

    def evaluate(model, method, corpus_name, trie, parts, **extra):
        ids = ids_all if trie is trie_all else ids0
        for part, qrows in parts:
            queries = query_enc.rows(qrows)
            ranker = ranker_for(model, ids, args.beams)
            started = time.perf_counter()
            ranked = Ranking.concat([
                ranker.rank(pad_states(queries.states[lo : lo + 64]), max(ks))
                for lo in range(0, len(queries.states), 64)
            ]).rows  # fmt: skip
            m = retrieval_metrics(ranked, targets(qrows), ks, time.perf_counter() - started)
            row(method, corpus_name, part, m, **extra)

    # ---- PromptDSI on D0
    model = new_model(sizes)
    set_key_center(model, doc_enc.rows(split.d0))
    model.set_topic_keys_(topic_keys(model, doc_enc.rows(split.d0), args.topics, args.seed))
    model.use_trie(trie0)
    if books is not None:  # what the centroid head alone gives, before any training
        evaluate(
            model,
            "PromptDSI untrained (centroid head)",
            "D0",
            trie0,
            [("D0-test", split.d0_test)],
            train_s=0.0,
        )
    result, train_s = timed(
        lambda: train_model(
            model, examples(split.d0, split.d0_train), fresh("d0"), train_cfg(args.epochs, args.lr)
        )
    )
    evaluate(
        model,
        "PromptDSI (D0)",
        "D0",
        trie0,
        [("D0-test", split.d0_test)],
        train_s=train_s,
        steps=result.steps,
    )
    both = [("D0-test", split.d0_test), ("D1-test", split.d1_test)]

    # ---- D1 added: incremental (new prompts only)
    inc = copy.deepcopy(model)
    m1 = max(1, round(args.topics * len(split.d1) / len(split.d0)))
    session = inc.add_prompt_session_(topic_keys(inc, doc_enc.rows(split.d1), m1, args.seed))
    inc.train_only_session_(session)
    inc.use_trie(trie_all)
    frozen = {
        k: v.clone() for k, v in inc.state_dict().items() if not k.startswith(f"prompts.{session}")
    }
    result, s = timed(
        lambda: train_model(
            inc,
            examples(split.d1, split.d1_train),
            fresh("inc"),
            train_cfg(args.add_epochs, args.prompt_lr),
        )
    )
    unchanged = all(torch.equal(v, inc.state_dict()[k]) for k, v in frozen.items())
    evaluate(
        inc,
        "PromptDSI incremental (+D1)",
        "D0+D1",
        trie_all,
        both,
        train_s=s,
        steps=result.steps,
        frozen_unchanged=unchanged,
        new_topics=m1,
    )

    # ---- D1 added: naive fine-tuning of prompts + decoder on D1 only
    naive = copy.deepcopy(model)
    naive.use_trie(trie_all)
    result, s = timed(
        lambda: train_model(
            naive,
            examples(split.d1, split.d1_train),
            fresh("naive"),
            train_cfg(args.add_epochs, args.lr),
        )
    )
    evaluate(naive, "naive fine-tune on D1", "D0+D1", trie_all, both, train_s=s, steps=result.steps)

    # ---- full retrain on D0 + D1 (upper bound)
    full = new_model(sizes)
    all_docs = torch.cat([split.d0, split.d1])
    set_key_center(full, doc_enc.rows(all_docs))
    full.set_topic_keys_(topic_keys(full, doc_enc.rows(all_docs), args.topics, args.seed))
    full.use_trie(trie_all)
    result, s = timed(
        lambda: train_model(
            full,
            examples(all_docs, torch.cat([split.d0_train, split.d1_train])),
            fresh("full"),
            train_cfg(args.epochs, args.lr),
        )
    )
    evaluate(full, "full retrain (D0+D1)", "D0+D1", trie_all, both, train_s=s, steps=result.steps)

    write_results(args, rows, coll, corpus, split, ids0, ids_all)


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


if __name__ == "__main__":
    main()
