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
import shutil
import time
from pathlib import Path

import torch

from benchmarks.retrieve_report import write_results
from benchmarks.text_baselines import BM25, dense_search
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
from semid.tasks.retrieve import dsi_examples
from semid.training import TrainConfig
from semid.training import train_model as fit_model

RESULTS = Path(__file__).parent / "results"


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


if __name__ == "__main__":
    main()
