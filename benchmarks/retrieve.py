"""Document retrieval on any collection: PromptDSI against BM25 and dense MiniLM, then adding D1 three ways.

    python -m benchmarks.retrieve --dataset debian-docs --docs 1000
    python -m benchmarks.retrieve --dataset manpages --docs 0      # all documents

Protocol: a seeded subset of the collection is split 90% D0 / 10% D1; the queries of 20% of each
part's documents are test queries (their documents are indexed, their queries never trained on);
of the remaining training documents, 10% (at most 1,000) hold out their queries to choose the
document head's mixing weight. Rows: BM25 and dense (faiss exact inner product over the same frozen
MiniLM vectors) on the D0 corpus and on D0+D1; PromptDSI before training (beams alone: the centroid
head; and mixed with its document head), trained on D0 (beams alone, and mixed); then D1 added by
PromptDSI incremental indexing (new prompts only), naive fine-tuning on D1 (prompts, adapter and
decoder, no D0 data), and a full retrain on D0+D1. Every method sees the same subset, split, IDs.
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
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.generators.promptdsi_states import (
    centroid_codebooks,
    encode_texts,
    set_key_center,
    topic_keys,
)
from semid.hybrid import LEXICAL_GRID
from semid.indexing import AUTO, auto_spec, build_ids
from semid.lexical import LexicalIndex
from semid.metrics import compute_metrics
from semid.ranking import Ranking, ranker_for
from semid.tasks.retrieve import (
    HeldOut,
    dsi_examples,
    load_collection,
    query_batches,
    query_examples,
    ranking_evaluator,
    train_or_keep_untrained,
    tune_mixes,
    valid_split,
)
from semid.training import TrainConfig
from semid.training import train_model as fit_model

RESULTS = Path(__file__).parent / "results"


def retrieval_metrics(ranked: torch.Tensor, targets: torch.Tensor, ks, seconds: float) -> dict:
    """Recall@k and MRR@k of ranked rows (Q, k_max) against target rows (Q,), plus queries/s."""
    metrics = compute_metrics(ranked, targets, ks=ks, names=("recall", "mrr"))
    return {**metrics, "num_queries": float(len(targets)), "queries_per_s": len(targets) / max(seconds, 1e-9)}


def train_model(model, examples, out_dir, config, evaluate=None):
    """Fit a PromptDSI on DSI examples with the shared loop (best weights loaded)."""
    return fit_model(model, examples, config, out_dir, evaluate=evaluate, collate_fn=examples.collate)


def timed(fn):
    """(result, seconds) of fn()."""
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def fusion_baseline(row, split, d0_valid, queries_of, docs_text, query_text, query_doc, doc_enc, query_enc,
                    ks) -> None:  # fmt: skip
    """dense + BM25 without any generator: log softmax(20 cos) + w log softmax(BM25) over all
    documents, w chosen on the same held-out D0 training queries as PromptDSI's mixing weights."""
    for corpus_name, corpus_rows in (("D0", split.d0), ("D0+D1", torch.cat([split.d0, split.d1]))):
        pos = {int(r): i for i, r in enumerate(corpus_rows)}
        lexical = LexicalIndex.from_texts([docs_text[int(r)] for r in corpus_rows])
        bank = doc_enc.embeddings[corpus_rows]

        def fused(qrows, w, bank=bank, lexical=lexical, chunk=1024):
            parts = []
            for lo in range(0, len(qrows), chunk):  # (chunk, N) scores at a time: big corpora fit in memory
                rows = qrows[lo : lo + chunk]
                dense = torch.log_softmax(20 * query_enc.embeddings[rows] @ bank.T, dim=-1)
                lex = lexical.log_probs([query_text[int(q)] for q in rows])
                parts.append((dense + w * lex).topk(max(ks), dim=1).indices)
            return torch.cat(parts)

        valid = queries_of(d0_valid)
        valid_targets = torch.tensor([pos[query_doc[int(q)]] for q in valid])
        scores = {w: compute_metrics(fused(valid, w), valid_targets, ks=(10,), names=("ndcg",))["ndcg@10"]
                  for w in LEXICAL_GRID}  # fmt: skip
        best = max(LEXICAL_GRID, key=lambda w: (scores[w], -w))
        for part, drows in (("D0-test", split.d0_test), ("D1-test", split.d1_test)):
            if corpus_name == "D0" and part == "D1-test":
                continue
            qrows = queries_of(drows)
            targets = torch.tensor([pos[query_doc[int(q)]] for q in qrows])
            ranked, s = timed(lambda qr=qrows, w=best: fused(qr, w))
            row(f"dense + BM25 fusion, no generator (w {best})", corpus_name, part,
                retrieval_metrics(ranked, targets, ks, s))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="debian-docs",
                   help="debian-docs, manpages, or a JSONL/CSV documents file (default: %(default)s)")  # fmt: skip
    p.add_argument("--docs", type=int, default=1000, help="seeded subset of the collection (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantizer", default="auto",
                   help="quantizer spec; auto: rqkmeans sized to D0, as `semid train retriever` (default: %(default)s)")  # fmt: skip
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
    p.add_argument("--rank-loss", type=float, default=1.0, help="weight of the document-ranking loss (0: no document head)")
    p.add_argument("--epochs", type=int, default=10,
                   help="most PromptDSI epochs on D0 and for the full retrain (the best on held-out queries is kept)")  # fmt: skip
    p.add_argument("--add-epochs", type=int, default=6, help="epochs on D1 (incremental and naive)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--prompt-lr", type=float, default=1e-2, help="learning rate of incremental prompt training"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--no-naive", action="store_true", help="skip the naive fine-tune row (long on big corpora)")
    p.add_argument("--no-baselines-after", action="store_true",
                   help="skip the naive fine-tune and full retrain rows (long on big corpora)")  # fmt: skip
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for checkpoints (default: /tmp/semid-bench-retrieve/<out>)")  # fmt: skip
    p.add_argument("--out", default=None, help="results name (default: retrieve-<dataset>)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    args.out = args.out or f"retrieve-{Path(args.dataset).stem}"
    args.work = args.work or Path("/tmp/semid-bench-retrieve") / args.out
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ks = (1, 10)
    corpus = load_collection(args.dataset)
    coll = corpus.subset(subset_rows(len(corpus), args.docs or None, args.seed), corpus.name)
    split = split_corpus(len(coll), args.seed)
    docs_text = coll.texts
    query_text, query_doc = query_examples(coll, list(range(len(coll))))  # every query, its doc row
    queries_of_doc: dict[int, list[int]] = {}
    for i, r in enumerate(query_doc):
        queries_of_doc.setdefault(r, []).append(i)

    def queries_of(doc_rows) -> torch.Tensor:
        """Rows into the flat query list of every query of these documents."""
        return torch.tensor([i for r in doc_rows for i in queries_of_doc.get(int(r), [])], dtype=torch.long)

    d0_train, d0_valid = valid_split(split.d0_train.tolist(), args.seed)
    d1_train = split.d1_train.tolist()  # D1 is small: every training document trains

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
            rank_loss=args.rank_loss,
        )
        model = PromptDSI(cfg)
        if levels:
            model.set_centroids_(books)
        return model

    probe = new_model([2])
    (doc_enc, query_enc), encode_s = timed(
        lambda: (
            encode_texts(probe, docs_text, desc="encode docs"),
            encode_texts(probe, query_text, desc="encode queries"),
        )
    )
    print(f"encoded {len(docs_text):,} documents and {len(query_text):,} queries in {encode_s:.0f} s", flush=True)
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
        for part, drows in (("D0-test", split.d0_test), ("D1-test", split.d1_test)):
            if corpus_name == "D0" and part == "D1-test":
                continue
            qrows = queries_of(drows)
            targets = torch.tensor([pos[query_doc[int(q)]] for q in qrows])
            ranked, s = timed(lambda qr=qrows, b=bm25: b.search([query_text[int(q)] for q in qr], max(ks)))
            row("BM25", corpus_name, part, retrieval_metrics(ranked, targets, ks, s),
                index_s=bm25_s[corpus_name])  # fmt: skip
            ranked, s = timed(
                lambda qr=qrows, cr=corpus_rows: dense_search(
                    doc_enc.embeddings[cr], query_enc.embeddings[qr], max(ks)
                )
            )
            row("dense MiniLM", corpus_name, part, retrieval_metrics(ranked, targets, ks, s),
                encode_s=encode_s)  # fmt: skip

    # ---- semantic IDs: quantizer fitted on D0, D1 added with the saved quantizer (as `index add`)
    keys = coll.ids
    if args.quantizer == AUTO:
        args.quantizer = auto_spec(len(split.d0))
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
    all_docs = torch.cat([split.d0, split.d1])
    row_of = {int(r): i for i, r in enumerate(all_docs)}  # ids_all row of a coll row
    bank0, bank_all = doc_enc.embeddings[split.d0], doc_enc.embeddings[all_docs]
    lex0 = LexicalIndex.from_texts([docs_text[int(r)] for r in split.d0])
    lex_all = LexicalIndex.from_texts([docs_text[int(r)] for r in all_docs])
    fusion_baseline(row, split, d0_valid, queries_of, docs_text, query_text, query_doc, doc_enc, query_enc, ks)

    def doc_targets(doc_rows) -> torch.Tensor:
        return torch.tensor([row_of[int(r)] for r in doc_rows], dtype=torch.long)

    def query_targets(qrows) -> torch.Tensor:
        return torch.tensor([row_of[query_doc[int(q)]] for q in qrows], dtype=torch.long)

    def train_cfg(epochs: int, lr: float, patience: int | None = None) -> TrainConfig:
        return TrainConfig(
            max_epochs=epochs,
            lr=lr,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=10**6,
            keep_checkpoints=1,
            early_stopping_patience=patience,
            mixed_precision="no",
            warmup_steps=20,
        )

    def valid_evaluator(trie):
        """Held-out D0 training queries choose the best epoch (and stop early), as in the task."""
        if args.rank_loss == 0 or not d0_valid:
            return None
        ids, lexical = (ids_all, lex_all) if trie is trie_all else (ids0, lex0)
        return ranking_evaluator(ids, held_out(trie), lexical, args.beams)

    def fresh(name: str) -> Path:
        shutil.rmtree(args.work / name, ignore_errors=True)
        return args.work / name

    def examples(doc_rows, train_docs):
        qrows = queries_of(train_docs)
        return dsi_examples(doc_enc.rows(doc_rows), doc_targets(doc_rows), query_enc.rows(qrows),
                            query_targets(qrows), ids_all.codes)  # fmt: skip

    def evaluate(model, method, corpus_name, trie, parts, beams_only=False, **extra):
        ids, lexical = (ids_all, lex_all) if trie is trie_all else (ids0, lex0)
        if model.query_adapter is not None:
            model.set_documents_(bank_all if trie is trie_all else bank0)
        mixes = {"item_mix": 0.0, "lexical_mix": 0.0} if beams_only and model.query_adapter is not None else {}
        for part, drows in parts:
            qrows = queries_of(drows)
            texts = [query_text[int(q)] for q in qrows]
            ranker = ranker_for(model, ids, args.beams, **mixes)
            started = time.perf_counter()
            ranked = Ranking.concat([ranker.rank(batch, max(ks)) for batch in query_batches(
                query_enc.rows(qrows), texts, None if mixes else lexical)]).rows  # fmt: skip
            m = retrieval_metrics(ranked, query_targets(qrows), ks, time.perf_counter() - started)
            row(method, corpus_name, part, m, **extra)

    def held_out(trie) -> HeldOut:
        qrows = queries_of(d0_valid)
        return HeldOut([query_text[int(q)] for q in qrows], query_enc.rows(qrows), query_targets(qrows))

    def choose_mix(model, trie) -> None:
        """Set the model's item_mix and lexical_mix on the D0 validation queries."""
        if model.query_adapter is None or not d0_valid:
            return
        model.set_documents_(bank_all if trie is trie_all else bank0)
        ids, lexical = (ids_all, lex_all) if trie is trie_all else (ids0, lex0)
        ndcg = tune_mixes(model, ids, held_out(trie), lexical, args.beams)
        best = max(ndcg.values())
        print(f"item_mix {model.config.item_mix}, lexical_mix {model.config.lexical_mix} (valid NDCG@10 "
              f"{best:.4f}; no mixing {ndcg['0.0,0.0']:.4f})", flush=True)  # fmt: skip

    def evaluate_both(model, method, corpus_name, trie, parts, **extra):
        """Beams alone, then mixed with the document head and lexical scores (when the model has a head)."""
        evaluate(model, f"{method}, beams only", corpus_name, trie, parts, beams_only=True, **extra)
        if model.query_adapter is not None:
            c = model.config
            evaluate(model, f"{method}, beams + document head + lexical (mix {c.item_mix}, {c.lexical_mix})",
                     corpus_name, trie, parts, **extra)  # fmt: skip

    # ---- PromptDSI on D0
    model = new_model(sizes)
    set_key_center(model, doc_enc.rows(split.d0))
    model.set_topic_keys_(topic_keys(model, doc_enc.rows(split.d0), args.topics, args.seed))
    model.use_trie(trie0)
    if model.query_adapter is not None:
        model.set_documents_(bank0)
    untrained = copy.deepcopy(model)
    choose_mix(untrained, trie0)
    evaluate_both(untrained, "PromptDSI untrained", "D0", trie0, [("D0-test", split.d0_test)], train_s=0.0)
    (result, kept), train_s = timed(lambda: train_or_keep_untrained(model, valid_evaluator(trie0), lambda: train_model(
        model, examples(split.d0, d0_train), fresh("d0"), train_cfg(args.epochs, args.lr, 2), valid_evaluator(trie0)
    )))  # fmt: skip
    print(f"kept the untrained weights: {kept}", flush=True)
    choose_mix(model, trie0)
    evaluate_both(model, "PromptDSI (D0)", "D0", trie0, [("D0-test", split.d0_test)],
                  train_s=train_s, steps=result.steps, kept_untrained=kept)  # fmt: skip
    both = [("D0-test", split.d0_test), ("D1-test", split.d1_test)]

    # ---- D1 added: incremental (new prompts only)
    inc = copy.deepcopy(model)
    m1 = max(1, round(args.topics * len(split.d1) / len(split.d0)))
    session = inc.add_prompt_session_(topic_keys(inc, doc_enc.rows(split.d1), m1, args.seed))
    inc.train_only_session_(session)
    inc.use_trie(trie_all)
    if inc.query_adapter is not None:
        inc.set_documents_(bank_all)
    frozen = {
        k: v.clone() for k, v in inc.state_dict().items() if not k.startswith(f"prompts.{session}")
    }
    result, s = timed(
        lambda: train_model(
            inc,
            examples(split.d1, d1_train),
            fresh("inc"),
            train_cfg(args.add_epochs, args.prompt_lr),
        )
    )
    unchanged = all(torch.equal(v, inc.state_dict()[k]) for k, v in frozen.items())
    evaluate_both(inc, "PromptDSI incremental (+D1)", "D0+D1", trie_all, both, train_s=s,
                  steps=result.steps, frozen_unchanged=unchanged, new_topics=m1)  # fmt: skip
    if not (args.no_baselines_after or args.no_naive):
        # ---- D1 added: naive fine-tuning of prompts + decoder on D1 only
        naive = copy.deepcopy(model)
        naive.use_trie(trie_all)
        if naive.query_adapter is not None:
            naive.set_documents_(bank_all)
        result, s = timed(
            lambda: train_model(
                naive, examples(split.d1, d1_train), fresh("naive"), train_cfg(args.add_epochs, args.lr)
            )
        )
        evaluate_both(naive, "naive fine-tune on D1", "D0+D1", trie_all, both, train_s=s, steps=result.steps)
    if not args.no_baselines_after:
        # ---- full retrain on D0 + D1 (upper bound)
        full = new_model(sizes)
        set_key_center(full, doc_enc.rows(all_docs))
        full.set_topic_keys_(topic_keys(full, doc_enc.rows(all_docs), args.topics, args.seed))
        full.use_trie(trie_all)
        if full.query_adapter is not None:
            full.set_documents_(bank_all)
        (result, kept), s = timed(lambda: train_or_keep_untrained(full, valid_evaluator(trie_all), lambda: train_model(
            full, examples(all_docs, d0_train + d1_train), fresh("full"), train_cfg(args.epochs, args.lr, 2),
            valid_evaluator(trie_all),
        )))  # fmt: skip
        choose_mix(full, trie_all)
        evaluate_both(full, "full retrain (D0+D1)", "D0+D1", trie_all, both, train_s=s, steps=result.steps)

    write_results(args, rows, coll, corpus, split, ids0, ids_all)


if __name__ == "__main__":
    main()
