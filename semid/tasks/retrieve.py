"""Generative document retrieval (PromptDSI): query text -> the semantic ID of the relevant document.

Protocol (docs/protocols.md): documents are split (seeded) into an initial corpus D0 (90%) and a
later corpus D1 (10%); in each part the queries of 80% of the documents are training queries, the
other 20% are test queries whose documents are indexed (trained on as text -> ID) but whose queries
never are. Training mixes indexing examples (document -> ID) and retrieval examples (every query of
a training document -> ID), as in DSI; a tenth of the training documents (at most 1,000) hold out
their queries to pick the best epoch and the ranking's mixing weights. The ranking fuses the beams
with PromptDSI's document head and BM25 (``lexical.safetensors`` and
``document_embeddings.safetensors`` beside the index; see docs/protocols.md). Adding D1 (``add``)
gives its documents IDs from the saved quantizer, inserts them in the trie, appends their embeddings
and BM25 counts, and trains only a new prompt session on D1, never revisiting D0. Metrics: R@k, MRR@k.
The training examples and splits are built in ``retrieval_data``; the ranking's parts (BM25,
the document head, their mixing weights) are in ``retrieval_ranking``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from semid.atomic import check_output_folder, read_json, restore_on_error, write_json
from semid.data.beir import beir_files, read_collection
from semid.data.corpus import (
    CorpusSplit,
    evaluation_queries,
    held_out_queries,
    own_test_split,
    query_examples,
    split_corpus,
    split_name,
    subset_rows,
    with_added_documents,
)
from semid.data.documents import (
    DocumentCollection,
    read_documents,
    write_documents,
)
from semid.data.pseudo_queries import given_documents, with_pseudo_queries
from semid.data.tables import content_sha256
from semid.distributed import is_main_process, main_process_value, on_main_process
from semid.errors import SemidError
from semid.generators.promptdsi import PromptDSI
from semid.generators.promptdsi_states import (
    EncodedTexts,
    centroid_codebooks,
    encode_texts,
    set_key_center,
    topic_keys,
)
from semid.ids import SemanticIDs
from semid.indexing import (
    add_lock,
    build_ids,
    crowding_note,
    grow_ids,
    read_texts,
    texts_file,
)
from semid.lexical import LexicalIndex
from semid.metrics import compute_metrics
from semid.notes import note, tell
from semid.quantization import Quantizer
from semid.ranking import DEFAULT_NUM_BEAMS, Ranking
from semid.runs import Run, load_run, replacing_run, write_run
from semid.tasks.base import (
    EvalOptions,
    IndexSource,
    QueryPredictor,
    Task,
    check_recommend_only_options,
    move,
    register_task,
    resolve_device,
    rows_to_add,
    subset_positions,
)
from semid.tasks.data import data_paths, trained_on
from semid.tasks.retrieval_data import (
    ExampleDataset,
    check_trainable,
    describe_split,
    dsi_examples,
    load_collection,
    note_long_documents,
    relevant_rows,
    valid_split,
)
from semid.tasks.retrieval_ranking import (
    LEXICAL,
    HeldOut,
    MixTuner,
    document_files,
    load_document_embeddings,
    load_lexical,
    query_batches,
    save_document_embeddings,
    train_or_keep_untrained,
)
from semid.tasks.retrieve_adds import check_held_out_ids, note_changed_texts
from semid.tasks.specs import RetrieveSpec
from semid.training.checkpoint_names import run_checkpoints
from semid.training.config import TrainConfig
from semid.wording import counted

EVAL_QUERIES = "eval_queries.json"
# in the index: {key: text} of the documents indexed at training, whole, as answers give them
# (those added later are in ADDED_TEXTS), so answering does not read and check the whole corpus
DOCUMENT_TEXTS = "document_texts.json"
LATER = "later.jsonl"
# the spec's fields, besides the corpus and the IDs, that shape the training examples
SPLIT_FIELDS = ("max_docs", "hold_out", "test_fraction", "seed")


def trained_pseudo_queries(run: Run) -> int:
    """Sentences per document that trained a run as its queries (0: it had real queries)."""
    return run.state.get("documents", {}).get("pseudo_queries", 0)


def read_eval_queries(run: Path) -> dict[str, list[list[Any]]]:
    """The held-out test queries of ``run/eval_queries.json`` by part ({} when there is no such
    file); SemidError if it holds anything but a JSON object."""
    path = run / EVAL_QUERIES
    parts = read_json(path, "retrain the run") if path.is_file() else {}
    if not isinstance(parts, dict):
        raise SemidError(f"{path} is not a JSON object of test queries by part; retrain the run")
    return parts


def record_eval_queries(run: Path, name: str, pairs: list[list[Any]],
                        earlier: dict[str, list[list[Any]]] | None = None) -> None:  # fmt: skip
    """Record a part's held-out test queries in ``run/eval_queries.json`` (read by `evaluate`),
    beside the ``earlier`` parts (default: those recorded)."""
    write_json(
        run / EVAL_QUERIES, (read_eval_queries(run) if earlier is None else earlier) | {name: pairs}
    )


def _check_eval_options(run: Run, options: EvalOptions) -> None:
    """SemidError for an evaluation option a retrieval run cannot honour (instead of ignoring it)."""
    if options.split != "test":
        raise SemidError(f"{run.path} is a retrieval run: it holds test queries only (its validation queries "
                         "chose the ranking's weights during training); leave out --split valid")  # fmt: skip
    check_recommend_only_options(run, options, "retrieval")


class RetrieveTask(Task):
    """PromptDSI over a document collection: D0 indexed and trained, D1 added without rehearsal."""

    name = "retrieve"
    entry = "document"
    add_source = "--docs"
    add_options = ("--epochs",)  # of the new prompt session (default: the run's --add-epochs)
    spec_class = RetrieveSpec

    def _build_index(self, source: IndexSource, quantizer: str, out: Path, collisions: str,
                    seed: int) -> tuple[SemanticIDs, list[str]]:  # fmt: skip
        """The index of D0 (the seeded initial corpus) of a document collection."""
        if collisions != "extra-level":  # refused, not ignored: documents always take extra-level
            raise SemidError(f"--collisions {collisions} is for item and image indexes; a document "
                             "index tells shared IDs apart with an extra level (documents added "
                             "later extend it); leave out --collisions")  # fmt: skip
        spec = RetrieveSpec(dataset=source.dataset, quantizer=quantizer, seed=seed)
        coll, split, _ = self._corpus(spec)
        ids, *_ = self._index_d0(spec, coll, split, out, source.device)
        left_out = len(coll) - len(ids)
        return ids, [
            f"indexed {len(ids):,} of the {counted(len(coll), 'document')} with {ids.quantizer_spec}"
            + (f" (the {left_out:,} others are left out as `semid train retriever` holds them out, "
               "to show `semid index add` without retraining; training builds its own index)"
               if left_out else "")
        ]  # fmt: skip

    def _corpus(self, spec: RetrieveSpec) -> tuple[DocumentCollection, CorpusSplit, str | None]:
        """The spec's documents (a seeded subset with ``max_docs``), their seeded split and the
        content hash of the whole collection they were taken from (the subset has none)."""
        collection = load_collection(spec.dataset)
        coll = collection.subset(
            subset_rows(len(collection), spec.max_docs, spec.seed), collection.name
        )
        coll = with_pseudo_queries(coll, spec.pseudo_queries, spec.seed)
        split = split_corpus(len(coll), spec.seed, spec.hold_out, spec.test_fraction)
        if coll.has_test_split:
            split = own_test_split(split)
        if len(split.d0) < 2:  # said here, where the hold-out that emptied D0 can be named
            held = (f" (a share of {spec.hold_out:g} is held out for `semid index add`)"
                    if spec.hold_out else "")  # fmt: skip
            smaller = " (training: or a smaller --hold-out)" if spec.hold_out else ""
            raise SemidError(
                f"{spec.dataset}: {len(split.d0)} of its {counted(len(coll), 'document')} would be "
                f"indexed now{held} and semantic IDs need at least 2; give more documents{smaller}"
            )
        return coll, split, collection.sha256

    def _index_d0(self, spec: RetrieveSpec, coll: DocumentCollection, split: CorpusSplit,
                  out: Path | None, device: str = "cpu") -> tuple[Any, ...]:  # fmt: skip
        """D0's IDs, quantizer, the probe encoder (on ``device``, which encodes the texts) and D0's
        encoded documents (on the CPU); the IDs are saved to ``out`` when given."""
        torch.manual_seed(spec.seed)
        probe = PromptDSI(replace(spec.model_config, codebook_sizes=[1], centroid_levels=0))
        probe.to(device)
        d0_docs = coll.subset(split.d0)
        docs = encode_texts(probe, d0_docs.texts, desc="encode documents")
        # fitted by the main process alone (a refusal stops every process); every process of a
        # launched job learns its IDs: on machines whose floating-point paths differ, the same
        # documents can get other ones
        built = on_main_process(lambda: build_ids(d0_docs.ids, docs.embeddings, spec.quantizer,
                                                  seed=spec.seed, metadata={"dataset": spec.dataset}),
                                device)  # fmt: skip
        ids, quantizer = main_process_value(built, device)
        if out is not None and is_main_process():
            ids.save(out, quantizer=quantizer)
        return ids, quantizer, probe, docs

    def _train(self, spec: RetrieveSpec, out: Path, index: Path | None = None,
              resume: bool = True, device: str = "auto") -> dict:  # fmt: skip
        """Split, encode, build IDs (quantizer fitted on D0), train PromptDSI on D0, save the run.

        The held-out later corpus goes to ``out/later.jsonl`` for ``semid index add``; D0's test
        queries to ``eval_queries.json``. Training resumes from ``out/train`` if present."""
        check_output_folder(out)
        if index is not None:
            raise SemidError("--index is for images; promptdsi builds its document index itself")
        from semid.training.checkpoints import (  # here: accelerate loads only to train
            DamagedCheckpointError,
            check_checkpoint,
            complete_checkpoints,
        )

        if resume:  # the index is rebuilt below: refuse a checkpoint with pickled code before that
            for folder in complete_checkpoints(run_checkpoints(out)):
                try:
                    check_checkpoint(folder)
                except DamagedCheckpointError:
                    pass  # the trainer skips it for an older one, with a note
        coll, split, corpus_sha256 = self._corpus(spec)
        check_trainable(coll, split.d0_train)  # before any work, and before the run folder exists
        # the index goes into the run with the model, at the end: until then the earlier run stays whole
        where = resolve_device(device)  # the frozen encoder runs there too: the GPU encodes fastest
        ids, quantizer, probe, docs = self._index_d0(spec, coll, split, None, where)
        note_long_documents(probe, docs, training=True)
        crowded = crowding_note(ids.stats(), noun="documents")  # `index build` says it too
        if crowded is not None:
            note(crowded)
        test_pairs = evaluation_queries(coll, split.d0_test, split.d0)
        tested = {q for q, _ in test_pairs}  # a query of a test and a training document is tested
        untrained = tested | held_out_queries(coll, split)
        if is_main_process():
            tell(describe_split(coll, split, tested, untrained))
        train_rows = [int(r) for r in split.d0_train
                      if any(q not in untrained for q in coll.documents[int(r)].queries)]  # fmt: skip
        # the document head's weight is chosen on held-out queries
        if spec.model_config.rank_loss > 0:
            train_rows, valid_rows = valid_split(train_rows, spec.seed)
        else:
            valid_rows = []
        query_texts, query_rows = query_examples(coll, train_rows, untrained)
        queries = encode_texts(probe, query_texts, desc="encode queries")
        model = _new_model(spec, ids, quantizer, probe, docs)
        position = {int(r): i for i, r in enumerate(split.d0)}  # collection row -> index row
        examples = dsi_examples(docs, torch.arange(len(docs.states)), queries,
                                torch.tensor([position[r] for r in query_rows]), ids.codes)  # fmt: skip
        lexical = LexicalIndex.from_texts(coll.subset(split.d0).texts)
        evaluate = None
        if valid_rows and model.has_item_head():
            valid_texts, valid_doc_rows = query_examples(coll, valid_rows, untrained)
            held_out = HeldOut(valid_texts, encode_texts(probe, valid_texts, desc="encode valid queries"),
                               torch.tensor([position[r] for r in valid_doc_rows]))  # fmt: skip
            evaluate = MixTuner(ids, held_out, lexical, spec.num_beams)
        # a registered collection is named by its name, a documents file by its content
        data_sha256 = corpus_sha256 if data_paths(spec.dataset) else None
        stamp = trained_on(data_sha256, spec.dataset, ids.sha256(), spec, SPLIT_FIELDS)
        if coll.pseudo_queries:  # they are the training queries (kept out of other runs' stamps)
            stamp["pseudo_queries"] = coll.pseudo_queries
        started = time.perf_counter()
        from semid.training import train_model  # here: accelerate loads only to train

        result, kept = train_or_keep_untrained(model.to(where), evaluate, lambda: train_model(
            model, examples, spec.train, out / "train", evaluate=evaluate, collate_fn=examples.collate,
            resume=resume, device=device, trained_on=stamp))  # fmt: skip
        seconds = result.resumed_after_s + time.perf_counter() - started  # earlier processes too
        summary = {"documents": len(split.d0), "quantizer": ids.quantizer_spec, "train_examples": len(examples),
                   "steps": result.steps, "train_seconds": round(seconds, 2), "kept_untrained": kept,
                   "test_queries": len(test_pairs), "test_split": split_name(coll)}  # fmt: skip
        if not is_main_process():  # the main process alone tunes and writes the run
            return summary
        if evaluate is not None:  # the best epoch's weights are loaded: their mixing weights
            ndcg = evaluate.tune(model)  # as chosen when the trainer scored them
            summary |= {"item_mix": model.config.item_mix, "lexical_mix": model.config.lexical_mix,
                        "valid_ndcg@10": max(ndcg.values())}  # fmt: skip
        state = {"corpus_sha256": corpus_sha256, "trained_items": len(ids), "train_seconds": seconds, "train_steps": result.steps,
                 "documents": {"d0": len(split.d0), "d1_held_out": len(split.d1),
                               "d0_test_documents": len({d for _, relevant in test_pairs for d in relevant}),
                               "d0_test_queries": len(test_pairs),
                               "test_split": split_name(coll), "pseudo_queries": coll.pseudo_queries}}  # fmt: skip
        indexed = coll.subset(split.d0)
        shown = dict(zip(indexed.ids, indexed.texts, strict=True))
        with replacing_run(out, [EVAL_QUERIES, LATER]):
            ids.save(out / "index", quantizer=quantizer,
                     extra_files={DOCUMENT_TEXTS: json.dumps(shown, ensure_ascii=False) + "\n"})  # fmt: skip
            save_document_embeddings(out / "index", docs.embeddings)
            lexical.save(out / "index" / LEXICAL)
            model.save_pretrained(out / "model")
            # an earlier run's test queries (d1-test... of its adds) and held-out documents go
            (out / EVAL_QUERIES).unlink(missing_ok=True)
            (out / LATER).unlink(missing_ok=True)
            record_eval_queries(out, "d0-test", test_pairs)
            if len(split.d1):
                write_documents(out / LATER, given_documents(coll.subset(split.d1)), coll.grades)
            write_run(out, self.name, spec, state)
        return summary

    def _evaluate(self, run: Run, options: EvalOptions) -> dict[str, float]:
        """Recall/MRR/NDCG@k on every recorded test-query part (d0-test, and d1-test once added),
        ranked with the run's mixing weight of the document head or ``options.item_mix``; a query
        with several relevant documents counts the share of them found (recall), and NDCG's gains
        are their grades (1 unless the collection grades them, as BEIR's qrels may)."""
        _check_eval_options(run, options)
        if not (run.path / EVAL_QUERIES).is_file():
            raise SemidError(
                f"{run.path} has no {EVAL_QUERIES}; train it with `semid train retriever`"
            )
        parts = read_eval_queries(run.path)
        if not any(parts.values()):
            pseudo = trained_pseudo_queries(run)
            why = "its documents came without queries and trained on their sentences" if pseudo else (
                "no test query answers an indexed document")  # fmt: skip
            raise SemidError(
                f'{run.path} has no test queries ({why}); give documents "test_queries" to '
                f'evaluate, or ask it with `semid predict {run.path} --query "..."`'
            )
        _note_changed_corpus(run, self.spec_of(run).dataset)
        predictor = self.predictor(run, options.device)
        metrics: dict[str, float] = {}
        for name, pairs in parts.items():
            pairs = [pairs[i] for i in subset_positions(len(pairs), options.max_queries).tolist()]
            if not pairs:
                continue
            started = time.perf_counter()
            ranking = predictor.rank_texts([q for q, _ in pairs], max(options.ks), options.num_beams,
                                           batch_size=options.batch_size, desc=f"encode {name}",
                                           item_mix=options.item_mix, cache=True)  # fmt: skip
            seconds = time.perf_counter() - started
            targets, grades = relevant_rows(run.ids, [relevant for _, relevant in pairs])
            part = compute_metrics(ranking.rows, targets, ks=options.ks,
                                   names=("recall", "mrr", "ndcg"), grades=grades)  # fmt: skip
            part |= {
                "num_queries": len(targets),
                "queries_per_s": len(targets) / max(seconds, 1e-9),
            }
            metrics |= {f"{name}/{k}": v for k, v in part.items()}
        return metrics

    def _add(self, run_path: Path, source: Path, topics: int | None = None,
             device: str = "auto", epochs: int | None = None,
             skip_indexed: bool = False) -> dict:  # fmt: skip
        """Index new documents without revisiting old ones: IDs from the saved quantizer, the trie
        grows, and only a new prompt session (keys: k-means of the new documents; ``epochs``, else
        the run's ``add_train`` epochs) is trained on the
        new documents and the training share of their queries; the rest become test queries
        (documents without queries are indexed only). The encoder and the session run on
        ``device``. All or nothing: everything is computed before the first write, and a failure
        while writing puts the run back as it was. Documents already indexed are refused, or left
        out with ``skip_indexed`` (``added`` 0 when none is new)."""
        run = load_run(run_path, self.name)
        spec = self.spec_of(run)
        collection = read_collection(source)
        rows = rows_to_add(collection.ids, run.ids.__contains__, "document", str(source),
                           skip_indexed, "give new ids")  # fmt: skip
        added = (
            collection.subset(rows, collection.name) if len(rows) < len(collection) else collection
        )
        check_held_out_ids(run_path / LATER, added, str(source))
        left_out = sorted(set(range(len(collection))) - set(rows))
        if left_out:
            note_changed_texts(run.index_path, DOCUMENT_TEXTS,
                               [collection.ids[i] for i in left_out],
                               [collection.texts[i] for i in left_out], str(source))  # fmt: skip
        if not rows:
            return {"added": 0, "documents": 0, "indexed": len(run.ids)}
        collection = added
        # query-less documents of a run trained on pseudo-queries get them too
        collection = with_pseudo_queries(collection, trained_pseudo_queries(run), spec.seed)
        model, start = run.model, len(run.ids)
        known, lexical = document_files(run.index_path, start)
        device = resolve_device(device)
        # the frozen encoder encodes there; then back on the CPU for the rest, as loaded
        model.to(device)
        docs = encode_texts(model, collection.texts, desc="encode new documents")
        note_long_documents(model, docs, training=False)
        g = torch.Generator().manual_seed(spec.seed + len(model.prompts))  # seeded like the split
        perm = torch.randperm(len(collection), generator=g)
        n_test = round(len(collection) * spec.test_fraction)
        train_local, test_local = perm[n_test:].sort().values, perm[:n_test].sort().values
        if collection.has_test_split:
            train_local = test_local = torch.arange(len(collection))
        # a query the earlier parts test gains the new documents that list it, there, and is
        # not tested again; those test queries stay untrained too
        recorded = read_eval_queries(run_path)
        earlier_parts, test_pairs = with_added_documents(
            recorded, collection,
            evaluation_queries(collection, test_local, torch.arange(len(collection))),
        )  # fmt: skip
        joined = sum(pair != merged for name, pairs in recorded.items()
                     for pair, merged in zip(pairs, earlier_parts[name], strict=True))  # fmt: skip
        tested = {q for pairs in [test_pairs, *earlier_parts.values()] for q, _ in pairs}
        query_texts, with_query = query_examples(collection, train_local.tolist(), tested)
        queries = encode_texts(model, query_texts, desc="encode new queries")
        model.cpu()
        session = len(model.prompts)
        # topic prompts: as many per document as the first session has, at most one per document
        m = topics or round(model.config.pool_sizes[0] * len(collection) / max(start, 1))
        m = min(max(m, 1), len(collection))
        # two changes, one inside the other: the session's training (its checkpoints, removed if
        # the add dies), during which the run is still whole and readable, then the writes of the
        # index, the model and the config, during which a reader waits (semid.manifest)
        with add_lock(run.index_path, f"index {run.index_path}"), \
                restore_on_error([run_path / f"train-session-{session}"]):  # fmt: skip
            ids, _, quantizer = grow_ids(run.index_path, collection.ids, docs.embeddings, model)
            rows = torch.arange(start, len(ids))
            if known is not None:
                model.set_documents_(torch.cat([known, docs.embeddings]))
            train = spec.add_train if epochs is None else replace(spec.add_train, max_epochs=epochs)
            seconds = self._train_session(model, ids, train, run_path,
                                          topic_keys(model, docs, m, spec.seed),
                                          dsi_examples(docs, rows, queries, rows[with_query], ids.codes),
                                          device)  # fmt: skip
            if lexical is not None:
                lexical.add(collection.texts)
            with restore_on_error([run.index_path, run_path / "model", run_path / EVAL_QUERIES,
                                   run_path / "config.json"]):  # fmt: skip
                ids.save(run.index_path, quantizer=quantizer, keep_other_files=True,
                         extra_files=texts_file(run.index_path, collection.ids, collection.texts))  # fmt: skip
                if known is not None:
                    save_document_embeddings(run.index_path, torch.cat([known, docs.embeddings]))
                if lexical is not None:
                    lexical.save(run.index_path / LEXICAL)
                model.save_pretrained(run_path / "model")
                record_eval_queries(run_path, f"d{session}-test", test_pairs, earlier_parts)
                state = dict(run.state)
                session_state = {"documents": len(collection), "topics": m, "train_seconds": seconds,
                                 "epochs": train.max_epochs,
                                 "test_queries": len(test_pairs)}  # fmt: skip
                state.setdefault("sessions", []).append(session_state)
                write_run(run_path, self.name, spec, state, added_from=source)
            # the session is in the model: its checkpoints (tens of MB per add) are of no more
            # use, nor those that adds before this version left
            for done in range(1, session + 1):
                shutil.rmtree(run_path / f"train-session-{done}", ignore_errors=True)
        return {"session": session, "added": len(collection), "documents": len(collection),
                "test_queries": len(test_pairs),
                "joined_test_queries": joined,
                "indexed": len(ids), "queries": sum(len(d.queries) + len(d.test_queries) for d in collection.documents),
                "topics": m, "train_seconds": seconds, "pseudo_queries": collection.pseudo_queries}  # fmt: skip

    def _train_session(self, model: PromptDSI, ids: SemanticIDs, train: TrainConfig, run_path: Path,
                       keys: Tensor, examples: ExampleDataset, device: str) -> float:  # fmt: skip
        """Train a new prompt session with these topic keys on ``examples`` on ``device`` with
        ``train``, everything else frozen (checked); returns the seconds it took."""
        session = model.add_prompt_session_(keys)
        model.train_only_session_(session)
        model.use_trie(ids.trie(model.codebook_sizes))
        frozen = {  # on the CPU: training may move the model to a GPU
            k: v.detach().cpu().clone()
            for k, v in model.state_dict().items()
            if not k.startswith(f"prompts.{session}")
        }
        started = time.perf_counter()
        from semid.training import train_model  # here: accelerate loads only to train

        # never resumed: the checkpoints an add killed outright left (restore_on_error could not
        # remove them) are of other documents, or of as many epochs as another --epochs asked
        train_model(model, examples, train, run_path / f"train-session-{session}",
                    collate_fn=examples.collate, device=device, resume=False)  # fmt: skip
        seconds = time.perf_counter() - started
        changed = [
            k
            for k, v in model.state_dict().items()
            if k in frozen and not torch.equal(v.cpu(), frozen[k])
        ]
        if changed:  # the promise of incremental indexing: nothing else moved
            raise SemidError(f"internal error: incremental training changed {changed[:3]}")
        model.requires_grad_(True)
        return seconds

    def predictor(self, run: Run, device: str = "cpu") -> RetrievePredictor:
        """Top-k documents for query texts."""
        return RetrievePredictor(run, device)


class RetrievePredictor(QueryPredictor):
    """Answers ``{"query": TEXT}`` with the top-k document ids."""

    task = "retrieve"

    def __init__(self, run: Run, device: str = "cpu") -> None:
        documents = load_document_embeddings(run.index_path)
        if documents is not None and run.model.query_adapter is not None:
            run.model.set_documents_(documents)
        self.lexical = load_lexical(run.index_path) if run.model.config.lexical_mix > 0 else None
        if run.model.config.lexical_mix > 0 and self.lexical is None:
            raise SemidError(
                f"{run.index_path} has no {LEXICAL} but the model mixes lexical scores; retrain the run"
            )
        super().__init__(run, device)

    def unsearched_note(self) -> str | None:
        """The documents training held out (``later.jsonl``) that no `semid index add` has
        indexed since: answers cannot include them."""
        later = self.run.path / LATER
        if not later.is_file():
            return None
        try:  # an edited later.jsonl: answering does not need it, and `index add` says why
            held_out = read_documents(later).ids
        except SemidError:
            return None
        waiting = [i for i in held_out if i not in self.run.ids]
        if not waiting:
            return None
        how = (f"`semid index add {self.run.path} --docs {later}` adds them"
               if len(waiting) == len(held_out) else "`semid index add` adds them")  # fmt: skip
        return (f"{self.run.path}'s corpus holds {counted(len(waiting), 'document')} that training "
                f"held out (--hold-out) and answers leave out until {how}")  # fmt: skip

    @property
    def default_num_beams(self) -> int:
        """The run's beams (``train retriever --num-beams``)."""
        return self.run.spec.get("num_beams", DEFAULT_NUM_BEAMS)

    def data_texts(self) -> dict[str, str]:
        """The indexed documents' texts (their first characters), kept in the index at training;
        from the run's collection for a run trained before the index kept them."""
        kept = self.run.index_path / DOCUMENT_TEXTS
        if kept.is_file():
            return read_texts(kept, "the documents indexed at training",
                              "predict then reads their texts from the corpus")  # fmt: skip
        collection = load_collection(TASK.spec_of(self.run).dataset)
        return dict(zip(collection.ids, collection.texts, strict=True))

    def rank(self, inputs: list[dict[str, Any]], k: int, num_beams: int | None) -> Ranking:
        """Encode the queries (cached) and search them in batches."""
        return self.rank_texts([x["query"] for x in inputs], k, num_beams)

    def rank_texts(self, texts: list[str], k: int, num_beams: int | None, batch_size: int = 64,
                   desc: str = "encode queries", item_mix: float | None = None,
                   cache: bool = False) -> Ranking:  # fmt: skip
        """Top-k document rows (Q, k) for query texts (``item_mix``: see `make_ranker`); with
        ``cache`` their encodings are cached on disk (a run's test queries, encoded by every
        `eval`; not the ever-new queries of `predict` and `serve`)."""
        ranker = self.mixed_ranker(num_beams, item_mix)
        queries = encode_texts(self.run.model, texts, desc=desc, cache=cache)
        parts = [ranker.rank(move(batch, self.device), k)
                 for batch in query_batches(queries, texts, self.lexical, batch_size)]  # fmt: skip
        return Ranking.concat(parts)


TASK = register_task(RetrieveTask())


def _new_model(spec: RetrieveSpec, ids: SemanticIDs, quantizer: Quantizer, probe: PromptDSI,
               docs: EncodedTexts) -> PromptDSI:  # fmt: skip
    """An untrained PromptDSI for the indexed documents: sized for their IDs, its centroid levels
    taken from an rqkmeans quantizer over the encoder's embeddings (every level it allows unless
    the spec says), its topic keys drawn from the documents, decoding constrained to their IDs."""
    books = centroid_codebooks(quantizer, probe.encoder.config.hidden_size)
    config = spec.model_config
    if config.centroid_levels and books is None:
        raise SemidError(f"centroid_levels needs an rqkmeans quantizer over the encoder's "
                         f"embeddings, not {spec.quantizer}")  # fmt: skip
    if config.centroid_levels is None:  # every level the quantizer's centroids allow
        config = replace(config, centroid_levels=0 if books is None else len(books))
    torch.manual_seed(spec.seed)
    model = PromptDSI(PromptDSI.sized_for(config, ids, extra_codes=spec.extra_codes))
    if model.config.centroid_levels:
        model.set_centroids_(books[: model.config.centroid_levels])
    set_key_center(model, docs)
    model.set_topic_keys_(topic_keys(model, docs, model.config.pool_sizes[0], spec.seed))
    model.use_trie(ids.trie(model.codebook_sizes))
    model.set_documents_(docs.embeddings)
    return model


def _note_changed_corpus(run: Run, dataset: str) -> None:
    """A note when the run's documents file or BEIR folder (texts, queries or judgements) changed
    since training: `evaluate` scores the test queries recorded then (eval_queries.json), not the
    changed ones. The files are hashed, not parsed (as training hashed them); a registered
    collection (pinned) or data moved away is not checked: evaluating needs neither."""
    trained, path = run.state.get("corpus_sha256"), Path(dataset)
    files = [path] if path.is_file() else beir_files(path) if path.is_dir() else []
    if trained is None or not files:
        return
    if content_sha256(files) != trained:
        note(f"the documents of {run.path} changed since training ({dataset}); it is evaluated "
             f"on the test queries and judgements recorded then ({EVAL_QUERIES}): retrain it to "
             "test the changed ones")  # fmt: skip
