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
A collection with its own test queries (a BEIR folder with ``qrels/test.tsv`` beside training qrels)
has them pooled with its other queries here: each method above needs documents of its own drawn
split (D1 among them), so only `semid eval` keeps a given split.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from benchmarks.retrieve_report import RESULTS, write_results
from benchmarks.text_baselines import BM25, dense_search
from semid.data.corpus import query_examples, split_corpus, subset_rows
from semid.data.documents import DocumentCollection
from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
from semid.generators.promptdsi_states import (
    centroid_codebooks,
    encode_texts,
    set_key_center,
    topic_keys,
)
from semid.hybrid import LEXICAL_GRID
from semid.ids import SemanticIDs
from semid.indexing import AUTO, auto_spec, build_ids
from semid.lexical import LexicalIndex
from semid.metrics import compute_metrics
from semid.ranking import Ranking, ranker_for
from semid.tasks.retrieval_data import dsi_examples, load_collection, valid_split
from semid.tasks.retrieval_ranking import (
    HeldOut,
    MixTuner,
    query_batches,
    train_or_keep_untrained,
    tune_mixes,
)
from semid.training import TrainConfig
from semid.training import train_model as fit_model
from semid.trie import PrefixTrie

T = TypeVar("T")


def retrieval_metrics(
    ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int], seconds: float
) -> dict:
    """Recall@k and MRR@k of ranked rows (Q, k_max) against target rows (Q,), plus queries/s."""
    metrics = compute_metrics(ranked, targets, ks=ks, names=("recall", "mrr"))
    return {
        **metrics,
        "num_queries": float(len(targets)),
        "queries_per_s": len(targets) / max(seconds, 1e-9),
    }


def train_model(model: PromptDSI, examples: Any, out_dir: Path, config: TrainConfig,
                evaluate: Callable[..., dict] | None = None) -> Any:  # fmt: skip
    """Fit a PromptDSI on DSI examples with the shared loop (best weights loaded), on the CPU,
    where this benchmark's searches and timings run."""
    return fit_model(
        model, examples, config, out_dir, evaluate=evaluate, collate_fn=examples.collate,
        device="cpu",
    )  # fmt: skip


def note_other_corpus(name: str, sha256: str | None) -> None:
    """Say so when the committed tables of collection ``name`` were measured on other bytes: a
    corpus built from the machine's installed documentation (debian-docs) differs between
    machines, and its figures then cannot be reproduced exactly (docs/datasets.md)."""
    measured = set()
    for table in RESULTS.glob(f"retrieve-{name}*.json"):
        corpus = json.loads(table.read_text()).get("meta", {}).get("corpus", {})
        if corpus.get("sha256") and corpus.get("name") == name:
            measured.add(corpus["sha256"])
    if sha256 and measured and sha256 not in measured:
        print(f"note: {name} here (sha256 {sha256[:12]}) is not the corpus of the committed tables "
              f"({', '.join(sorted(m[:12] for m in measured))}): it is built from this machine's "
              "files, so the figures will differ from them (see docs/datasets.md)", flush=True)  # fmt: skip


def timed(fn: Callable[[], T], repeats: int = 1) -> tuple[T, float]:
    """(result, seconds) of fn(): the first call's result, the median seconds of ``repeats``
    calls (a search's; building and encoding run once)."""
    seconds, out = [], None
    for i in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
        out = result if i == 0 else out
    return out, statistics.median(seconds)


@dataclass
class Queries:
    """Every query of the subset, in one flat list: its text and the subset row of its document."""

    text: list[str]
    doc: list[int]
    of_doc: dict[int, list[int]]  # subset row of a document -> positions of its queries in the list

    @classmethod
    def of(cls, coll: DocumentCollection) -> Queries:
        """The queries of every document of ``coll``."""
        text, doc = query_examples(coll, list(range(len(coll))))
        of_doc: dict[int, list[int]] = {}
        for i, r in enumerate(doc):
            of_doc.setdefault(r, []).append(i)
        return cls(text, doc, of_doc)

    def of_docs(self, doc_rows: Iterable[int] | torch.Tensor) -> torch.Tensor:
        """Positions in the flat list of every query of these documents."""
        return torch.tensor(
            [i for r in doc_rows for i in self.of_doc.get(int(r), [])], dtype=torch.long
        )


@dataclass
class IndexView:
    """One corpus the generators search: D0, or D0+D1 once D1 is added."""

    name: str
    ids: SemanticIDs
    trie: PrefixTrie
    lexical: LexicalIndex
    bank: torch.Tensor  # frozen embeddings of its documents, the document head's bank


class RetrievalBenchmark:
    """The protocol of the module doc on one seeded subset; each ``run_*`` step appends its rows."""

    ks = (1, 10)

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.corpus = load_collection(args.dataset)
        if self.corpus.has_test_split:  # every method here needs the same drawn split of documents
            print(f"{args.dataset} gives its own test queries (BEIR's qrels/test.tsv); this benchmark "
                  "pools them with the others and draws its split of documents, as for any collection "
                  "(`semid eval` of a run keeps the given split)", flush=True)  # fmt: skip
            self.corpus = self.corpus.pooled()
        note_other_corpus(self.corpus.name, self.corpus.sha256)
        self.coll = self.corpus.subset(subset_rows(len(self.corpus), args.docs or None, args.seed),
                                       self.corpus.name)  # fmt: skip
        self.split = split_corpus(len(self.coll), args.seed)
        self.docs_text = self.coll.texts
        self.queries = Queries.of(self.coll)
        self.d0_train, self.d0_valid = valid_split(self.split.d0_train.tolist(), args.seed)
        self.d1_train = self.split.d1_train.tolist()  # D1 is small: every training document trains
        # rqkmeans codebooks for the centroid head (build_index)
        self.books: torch.Tensor | None = None
        self.rows: list[dict] = []
        probe = self.new_model([2])
        (self.doc_enc, self.query_enc), self.encode_s = timed(lambda: (
            encode_texts(probe, self.docs_text, desc="encode docs"),
            encode_texts(probe, self.queries.text, desc="encode queries"),
        ))  # fmt: skip
        print(f"encoded {len(self.docs_text):,} documents and {len(self.queries.text):,} queries in "
              f"{self.encode_s:.0f} s", flush=True)  # fmt: skip

    def corpora(self) -> tuple[tuple[str, torch.Tensor], ...]:
        """(name, subset rows) of the two corpora: D0, and D0+D1."""
        return ("D0", self.split.d0), ("D0+D1", torch.cat([self.split.d0, self.split.d1]))

    def test_parts(self, corpus_name: str) -> list[tuple[str, torch.Tensor]]:
        """(name, document rows) of the test queries searched in a corpus: D1's only once it is in."""
        parts = [("D0-test", self.split.d0_test), ("D1-test", self.split.d1_test)]
        return parts[:1] if corpus_name == "D0" else parts

    def row(self, method: str, corpus_name: str, part: str, metrics: dict, **extra: Any) -> None:
        """Append (and print) one result row, with the 1-minute load average at the end of its
        timings."""
        self.rows.append({"method": method, "corpus": corpus_name, "queries": part,
                          **{k: round(v, 4) for k, v in metrics.items()}, **extra,
                          "load_1min": round(os.getloadavg()[0], 2)})  # fmt: skip
        print(self.rows[-1], flush=True)

    # ---- baselines, on the D0 corpus and on D0 + D1; rows are positions in the corpus's rows

    def run_baselines(self) -> None:
        """BM25 and dense MiniLM (faiss exact inner product) rows."""
        for corpus_name, corpus_rows in self.corpora():
            pos = {int(r): i for i, r in enumerate(corpus_rows)}
            bm25, bm25_s = timed(lambda cr=corpus_rows: BM25([self.docs_text[int(r)] for r in cr]))
            for part, drows in self.test_parts(corpus_name):
                qrows = self.queries.of_docs(drows)
                targets = torch.tensor([pos[self.queries.doc[int(q)]] for q in qrows])
                ranked, s = timed(lambda qr=qrows, b=bm25: b.search([self.queries.text[int(q)] for q in qr],
                                                                    max(self.ks)), self.args.reps)  # fmt: skip
                self.row(
                    "BM25",
                    corpus_name,
                    part,
                    retrieval_metrics(ranked, targets, self.ks, s),
                    index_s=bm25_s,
                )
                ranked, s = timed(lambda qr=qrows, cr=corpus_rows: dense_search(
                    self.doc_enc.embeddings[cr], self.query_enc.embeddings[qr], max(self.ks)), self.args.reps)  # fmt: skip
                self.row("dense MiniLM", corpus_name, part, retrieval_metrics(ranked, targets, self.ks, s),
                         encode_s=self.encode_s)  # fmt: skip

    def run_fusion_baseline(self) -> None:
        """dense + BM25 without any generator: log softmax(20 cos) + w log softmax(BM25) over all
        documents, w chosen on the same held-out D0 training queries as PromptDSI's mixing weights."""
        q = self.queries
        for corpus_name, corpus_rows in self.corpora():
            pos = {int(r): i for i, r in enumerate(corpus_rows)}
            lexical = LexicalIndex.from_texts([self.docs_text[int(r)] for r in corpus_rows])
            bank = self.doc_enc.embeddings[corpus_rows]

            def fused(qrows, w, bank=bank, lexical=lexical, chunk=1024):
                parts = []
                # (chunk, N) scores at a time: big corpora fit in memory
                for lo in range(0, len(qrows), chunk):
                    rows = qrows[lo : lo + chunk]
                    dense = torch.log_softmax(20 * self.query_enc.embeddings[rows] @ bank.T, dim=-1)
                    lex = lexical.log_probs([q.text[int(i)] for i in rows])
                    parts.append((dense + w * lex).topk(max(self.ks), dim=1).indices)
                return torch.cat(parts)

            valid = q.of_docs(self.d0_valid)
            valid_targets = torch.tensor([pos[q.doc[int(i)]] for i in valid])
            scores = {w: compute_metrics(fused(valid, w), valid_targets, ks=(10,), names=("ndcg",))["ndcg@10"]
                      for w in LEXICAL_GRID}  # fmt: skip
            best = max(LEXICAL_GRID, key=lambda w: (scores[w], -w))
            for part, drows in self.test_parts(corpus_name):
                qrows = q.of_docs(drows)
                targets = torch.tensor([pos[q.doc[int(i)]] for i in qrows])
                ranked, s = timed(lambda qr=qrows, w=best: fused(qr, w), self.args.reps)
                self.row(f"dense + BM25 fusion, no generator (w {best})", corpus_name, part,
                         retrieval_metrics(ranked, targets, self.ks, s))  # fmt: skip

    # ---- semantic IDs: quantizer fitted on D0, D1 added with the saved quantizer (as `index add`)

    def build_index(self) -> None:
        """The D0 index, the D0+D1 index after adding D1, and the model's codebook sizes."""
        args, split, keys = self.args, self.split, self.coll.ids
        if args.quantizer == AUTO:
            args.quantizer = auto_spec(len(split.d0))
        self.ids0, quantizer = build_ids([keys[int(r)] for r in split.d0], self.doc_enc.embeddings[split.d0],
                                         args.quantizer, seed=args.seed)  # fmt: skip
        self.ids_all = copy.deepcopy(self.ids0)
        self.ids_all.add(
            [keys[int(r)] for r in split.d1], quantizer.encode(self.doc_enc.embeddings[split.d1])
        )
        extra = max(8, self.ids_all.codebook_sizes[-1] - self.ids0.codebook_sizes[-1])
        self.sizes = PromptDSI.sized_for(
            PromptDSIConfig(), self.ids0, extra_codes=extra
        ).codebook_sizes
        self.books = centroid_codebooks(quantizer, self.doc_enc.embeddings.shape[1])
        if self.books is not None and args.centroid_levels >= 0:
            self.books = self.books[: args.centroid_levels] if args.centroid_levels else None
        self.all_docs = torch.cat([split.d0, split.d1])
        # ids_all row of a subset row
        self.row_of = {int(r): i for i, r in enumerate(self.all_docs)}
        self.d0 = IndexView("D0", self.ids0, self.ids0.trie(self.sizes),
                            LexicalIndex.from_texts([self.docs_text[int(r)] for r in split.d0]),
                            self.doc_enc.embeddings[split.d0])  # fmt: skip
        self.all = IndexView("D0+D1", self.ids_all, self.ids_all.trie(self.sizes),
                             LexicalIndex.from_texts([self.docs_text[int(r)] for r in self.all_docs]),
                             self.doc_enc.embeddings[self.all_docs])  # fmt: skip

    def new_model(self, sizes: list[int]) -> PromptDSI:
        """A fresh PromptDSI (seeded) of the arguments' shape, with the centroid head when there are codebooks."""
        args = self.args
        torch.manual_seed(args.seed)
        levels = 0 if self.books is None else len(self.books)
        model = PromptDSI(PromptDSIConfig(
            codebook_sizes=sizes, prompt_layer=args.prompt_layer, pool_sizes=[args.topics],
            max_length=args.max_length, d_model=args.d_model, d_ff=4 * args.d_model, centroid_levels=levels,
            decoder_on_centroid_levels=args.decoder_on_centroid_levels, rank_loss=args.rank_loss,
        ))  # fmt: skip
        if levels:
            model.set_centroids_(self.books)
        return model

    def topic_model(self, doc_rows: torch.Tensor, view: IndexView) -> PromptDSI:
        """A fresh model with its key center and topic keys from these documents, searching ``view``."""
        model = self.new_model(self.sizes)
        set_key_center(model, self.doc_enc.rows(doc_rows))
        model.set_topic_keys_(
            topic_keys(model, self.doc_enc.rows(doc_rows), self.args.topics, self.args.seed)
        )
        self.search(model, view)
        return model

    @staticmethod
    def search(model: PromptDSI, view: IndexView) -> None:
        """Point the model at a corpus: its trie and (with a document head) its document bank."""
        model.use_trie(view.trie)
        if model.query_adapter is not None:
            model.set_documents_(view.bank)

    def train_config(self, epochs: int, lr: float, patience: int | None = None) -> TrainConfig:
        """The trainer's settings of every PromptDSI run here."""
        return TrainConfig(max_epochs=epochs, lr=lr, batch_size=self.args.batch_size, seed=self.args.seed,
                           checkpoint_every=10**6, keep_checkpoints=1, early_stopping_patience=patience,
                           mixed_precision="no", warmup_steps=20)  # fmt: skip

    def query_targets(self, qrows: torch.Tensor) -> torch.Tensor:
        """ids_all rows (D0 rows come first, so also ids0 rows) of the documents of these queries."""
        return torch.tensor(
            [self.row_of[self.queries.doc[int(q)]] for q in qrows], dtype=torch.long
        )

    def held_out(self) -> HeldOut:
        """The held-out D0 training queries, which choose the best epoch and the mixing weights."""
        qrows = self.queries.of_docs(self.d0_valid)
        return HeldOut([self.queries.text[int(q)] for q in qrows], self.query_enc.rows(qrows),
                       self.query_targets(qrows))  # fmt: skip

    def valid_evaluator(self, view: IndexView) -> Callable[..., dict] | None:
        """Held-out D0 training queries choose the best epoch (and stop early), as in the task."""
        if self.args.rank_loss == 0 or not self.d0_valid:
            return None
        return MixTuner(view.ids, self.held_out(), view.lexical, self.args.beams)

    def fresh(self, name: str) -> Path:
        """An emptied scratch folder for one training run."""
        shutil.rmtree(self.args.work / name, ignore_errors=True)
        return self.args.work / name

    def examples(self, doc_rows: torch.Tensor, train_docs: list[int]) -> Any:
        """DSI examples: the documents at ``doc_rows``, and the queries of ``train_docs``."""
        qrows = self.queries.of_docs(train_docs)
        doc_targets = torch.tensor([self.row_of[int(r)] for r in doc_rows], dtype=torch.long)
        return dsi_examples(self.doc_enc.rows(doc_rows), doc_targets, self.query_enc.rows(qrows),
                            self.query_targets(qrows), self.ids_all.codes)  # fmt: skip

    def train(self, model: PromptDSI, doc_rows: torch.Tensor, train_docs: list[int], name: str, epochs: int,
              lr: float, view: IndexView | None = None, patience: int | None = None) -> tuple[Any, float]:  # fmt: skip
        """(TrainResult, seconds) of training ``model``; with ``view``, held-out queries pick the epoch."""
        evaluate = None if view is None else self.valid_evaluator(view)
        return timed(lambda: train_model(model, self.examples(doc_rows, train_docs), self.fresh(name),
                                         self.train_config(epochs, lr, patience), evaluate))  # fmt: skip

    def choose_mix(self, model: PromptDSI, view: IndexView) -> None:
        """Set the model's item_mix and lexical_mix on the D0 validation queries."""
        if model.query_adapter is None or not self.d0_valid:
            return
        model.set_documents_(view.bank)
        ndcg = tune_mixes(model, view.ids, self.held_out(), view.lexical, self.args.beams)
        print(f"item_mix {model.config.item_mix}, lexical_mix {model.config.lexical_mix} (valid NDCG@10 "
              f"{max(ndcg.values()):.4f}; no mixing {ndcg['0.0,0.0']:.4f})", flush=True)  # fmt: skip

    def evaluate(self, model: PromptDSI, method: str, view: IndexView, beams_only: bool = False,
                 **extra: Any) -> None:  # fmt: skip
        """One row per test part searched in ``view``: the beams alone, or the model's mixed ranking."""
        if model.query_adapter is not None:
            model.set_documents_(view.bank)
        mixes = (
            {"item_mix": 0.0, "lexical_mix": 0.0}
            if beams_only and model.query_adapter is not None
            else {}
        )
        for part, drows in self.test_parts(view.name):
            qrows = self.queries.of_docs(drows)
            texts = [self.queries.text[int(q)] for q in qrows]
            ranker = ranker_for(model, view.ids, self.args.beams, **mixes)
            ranked, s = timed(lambda r=ranker, qr=qrows, t=texts: Ranking.concat([r.rank(batch, max(self.ks)) for batch in query_batches(
                self.query_enc.rows(qr), t, None if mixes else view.lexical)]).rows, self.args.reps)  # fmt: skip
            metrics = retrieval_metrics(ranked, self.query_targets(qrows), self.ks, s)
            self.row(method, view.name, part, metrics, **extra)

    def evaluate_both(self, model: PromptDSI, method: str, view: IndexView, **extra: Any) -> None:
        """Beams alone, then mixed with the document head and lexical scores (when the model has a head)."""
        self.evaluate(model, f"{method}, beams only", view, beams_only=True, **extra)
        if model.query_adapter is not None:
            c = model.config
            self.evaluate(model, f"{method}, beams + document head + lexical (mix {c.item_mix}, {c.lexical_mix})",
                          view, **extra)  # fmt: skip

    # ---- PromptDSI

    def run_d0(self) -> PromptDSI:
        """PromptDSI untrained and trained on D0 (the better of the two on held-out queries is kept)."""
        model = self.topic_model(self.split.d0, self.d0)
        untrained = copy.deepcopy(model)
        self.choose_mix(untrained, self.d0)
        self.evaluate_both(untrained, "PromptDSI untrained", self.d0, train_s=0.0)
        (result, kept), train_s = timed(lambda: train_or_keep_untrained(
            model, self.valid_evaluator(self.d0),
            lambda: self.train(model, self.split.d0, self.d0_train, "d0", self.args.epochs, self.args.lr,
                               self.d0, patience=2)[0]))  # fmt: skip
        print(f"kept the untrained weights: {kept}", flush=True)
        self.choose_mix(model, self.d0)
        self.evaluate_both(model, "PromptDSI (D0)", self.d0, train_s=train_s, steps=result.steps,
                           kept_untrained=kept)  # fmt: skip
        return model

    def run_incremental(self, model: PromptDSI) -> None:
        """D1 added by PromptDSI incremental indexing: new prompts trained on D1, the rest frozen."""
        inc = copy.deepcopy(model)
        new_topics = max(1, round(self.args.topics * len(self.split.d1) / len(self.split.d0)))
        session = inc.add_prompt_session_(topic_keys(inc, self.doc_enc.rows(self.split.d1), new_topics,
                                                     self.args.seed))  # fmt: skip
        inc.train_only_session_(session)
        self.search(inc, self.all)
        frozen = {
            k: v.clone()
            for k, v in inc.state_dict().items()
            if not k.startswith(f"prompts.{session}")
        }
        result, s = self.train(
            inc, self.split.d1, self.d1_train, "inc", self.args.add_epochs, self.args.prompt_lr
        )
        unchanged = all(torch.equal(v, inc.state_dict()[k]) for k, v in frozen.items())
        self.evaluate_both(inc, "PromptDSI incremental (+D1)", self.all, train_s=s, steps=result.steps,
                           frozen_unchanged=unchanged, new_topics=new_topics)  # fmt: skip

    def run_naive(self, model: PromptDSI) -> None:
        """D1 added by naive fine-tuning of prompts, adapter and decoder on D1 only."""
        naive = copy.deepcopy(model)
        self.search(naive, self.all)
        result, s = self.train(
            naive, self.split.d1, self.d1_train, "naive", self.args.add_epochs, self.args.lr
        )
        self.evaluate_both(naive, "naive fine-tune on D1", self.all, train_s=s, steps=result.steps)

    def run_full_retrain(self) -> None:
        """A fresh model trained on D0 + D1 (the upper bound)."""
        full = self.topic_model(self.all_docs, self.all)
        (result, kept), s = timed(lambda: train_or_keep_untrained(
            full, self.valid_evaluator(self.all),
            lambda: self.train(full, self.all_docs, self.d0_train + self.d1_train, "full", self.args.epochs,
                               self.args.lr, self.all, patience=2)[0]))  # fmt: skip
        self.choose_mix(full, self.all)
        self.evaluate_both(full, "full retrain (D0+D1)", self.all, train_s=s, steps=result.steps)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark of the module doc with the command line's (or ``argv``'s) settings."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="debian-docs",
                   help="debian-docs, manpages, or a JSONL/CSV documents file (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--docs", type=int, default=1000, help="seeded subset of the collection (0: all)"
    )
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
    p.add_argument(
        "--rank-loss",
        type=float,
        default=1.0,
        help="weight of the document-ranking loss (0: no document head)",
    )
    p.add_argument("--epochs", type=int, default=10,
                   help="most PromptDSI epochs on D0 and for the full retrain (the best on held-out queries is kept)")  # fmt: skip
    p.add_argument("--add-epochs", type=int, default=6, help="epochs on D1 (incremental and naive)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--prompt-lr", type=float, default=1e-2, help="learning rate of incremental prompt training"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument(
        "--no-naive", action="store_true", help="skip the naive fine-tune row (long on big corpora)"
    )
    p.add_argument("--no-baselines-after", action="store_true",
                   help="skip the naive fine-tune and full retrain rows (long on big corpora)")  # fmt: skip
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for checkpoints (default: /tmp/semid-bench-retrieve/<out>)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="results stem: STEM.json and STEM.md (default: benchmarks/results/retrieve-<dataset>)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--reps", type=int, default=3,
                   help="passes of each search, its median time giving queries/s (default: %(default)s)")  # fmt: skip
    args = p.parse_args(argv)
    args.out = Path(args.out) if args.out else RESULTS / f"retrieve-{Path(args.dataset).stem}"
    args.work = args.work or Path("/tmp/semid-bench-retrieve") / args.out.name
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bench = RetrievalBenchmark(args)
    bench.run_baselines()
    bench.build_index()
    bench.run_fusion_baseline()
    model = bench.run_d0()
    bench.run_incremental(model)
    if not (args.no_baselines_after or args.no_naive):
        bench.run_naive(model)
    if not args.no_baselines_after:
        bench.run_full_retrain()
    write_results(
        args, bench.rows, bench.coll, bench.corpus, bench.split, bench.ids0, bench.ids_all
    )


if __name__ == "__main__":
    main()
