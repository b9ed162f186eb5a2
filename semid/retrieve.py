"""Generative document retrieval with PromptDSI: split, encode, index, train, retrieve, add documents.

Protocol (issue 6): documents are split (seeded) into an initial corpus D0 (90%) and a later corpus
D1 (10%); in each part the queries of 80% of the documents are training queries, the other 20% are
test queries whose documents are indexed (trained on as text -> ID) but whose queries never are.
Training mixes indexing examples (document -> ID) and retrieval examples (query -> ID), as in DSI.
Adding D1 (``add_documents``) gives its documents IDs from the saved quantizer, inserts them in
the trie, and trains only a new prompt session on D1, never revisiting D0.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from semid.atomic import atomic_file, write_json
from semid.data.documents import DocumentCollection
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.metrics import compute_metrics
from semid.trie import PrefixTrie


# ---------------------------------------------------------------- split
@dataclass
class CorpusSplit:
    """Row indices into a collection: D0/D1 documents and, in each, train and test query rows."""

    d0: Tensor
    d1: Tensor
    d0_train: Tensor  # rows of D0 whose queries are trained on
    d0_test: Tensor  # rows of D0 whose queries are only evaluated
    d1_train: Tensor
    d1_test: Tensor


def split_corpus(
    n: int, seed: int = 0, later_fraction: float = 0.1, test_fraction: float = 0.2
) -> CorpusSplit:
    """The seeded D0/D1 and train/test-query split of n documents (rows sorted within each part)."""
    if not (0 <= later_fraction < 1 and 0 <= test_fraction < 1):
        raise SemidError("later and test fractions must lie in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n1 = round(n * later_fraction)
    d0, d1 = perm[: n - n1], perm[n - n1 :]

    def cut(rows: Tensor) -> tuple[Tensor, Tensor]:
        n_test = round(len(rows) * test_fraction)
        return rows[n_test:].sort().values, rows[:n_test].sort().values

    (d0_train, d0_test), (d1_train, d1_test) = cut(d0), cut(d1)
    return CorpusSplit(d0.sort().values, d1.sort().values, d0_train, d0_test, d1_train, d1_test)


def subset_rows(n: int, size: int | None, seed: int = 0) -> Tensor:
    """A seeded sample of ``size`` rows of n (sorted), or all rows."""
    if size is None or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randperm(n, generator=g)[:size].sort().values


# ---------------------------------------------------------------- encoding (cached)
@dataclass
class EncodedTexts:
    """Frozen-encoder outputs per text: prompt-free lower states and the sentence embedding."""

    states: list[Tensor]  # per text (T_i, H) float16, the input to layer prompt_layer
    embeddings: Tensor  # (N, H) float32, L2-normalised (the encoder's own sentence embedding)

    def rows(self, rows: Sequence[int] | Tensor) -> EncodedTexts:
        """The texts at ``rows``."""
        rows = [int(r) for r in rows]
        return EncodedTexts([self.states[r] for r in rows], self.embeddings[rows])


def _cache_dir() -> Path:
    root = os.environ.get("SEMID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "semid") / "promptdsi"


def _cache_key(model: Any, texts: Sequence[str]) -> str:
    cfg = model.config
    h = hashlib.sha256(
        json.dumps(
            [
                "v1",
                cfg.encoder_path,
                cfg.encoder_config,
                cfg.encoder_seed,
                cfg.max_length,
                cfg.prompt_layer,
            ]
        ).encode()
    )
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


@torch.no_grad()
def encode_texts(
    model: Any, texts: Sequence[str], batch_size: int = 64, desc: str = "encode", cache: bool = True
) -> EncodedTexts:
    """Run the frozen encoder once per text (sorted by length, order kept); cached on disk by content."""
    texts = list(texts)
    path = _cache_dir() / f"{_cache_key(model, texts)}.safetensors"
    if cache and path.is_file():
        t = load_file(str(path))
        return EncodedTexts(list(torch.split(t["states"], t["lengths"].tolist())), t["embeddings"])
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    states: list[Tensor | None] = [None] * len(texts)
    emb = torch.zeros(len(texts), model.encoder.config.hidden_size)
    for lo in tqdm(range(0, len(texts), batch_size), desc=desc, disable=len(texts) <= batch_size):
        rows = order[lo : lo + batch_size]
        inp = model.tokenize([texts[i] for i in rows])
        hidden = model.lower_states(**inp)
        emb[rows] = model.text_embedding(hidden, inp["attention_mask"]).float().cpu()
        lengths = inp["attention_mask"].sum(1).tolist()
        for j, i in enumerate(rows):
            states[i] = hidden[j, : lengths[j]].half().cpu()
    out = EncodedTexts(states, emb)
    if cache:
        with atomic_file(path, "wb") as f:
            f.write(_to_bytes(out))
    return out


def _to_bytes(enc: EncodedTexts) -> bytes:
    from safetensors.torch import save

    lengths = torch.tensor([len(s) for s in enc.states], dtype=torch.long)
    return save(
        {
            "states": torch.cat(enc.states).contiguous(),
            "lengths": lengths,
            "embeddings": enc.embeddings.contiguous(),
        }
    )


# ---------------------------------------------------------------- examples
class ExampleDataset(Dataset):
    """(text states -> target row) pairs; ``collate`` pads into a PromptDSI batch."""

    def __init__(self, states: list[Tensor], targets: Tensor, codes: Tensor) -> None:
        if len(states) != len(targets):
            raise SemidError(f"{len(states)} texts for {len(targets)} targets")
        self.states, self.targets, self.codes = states, targets.long(), codes

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, Tensor]:
        """hidden (B, T, H), attention_mask (B, T), targets (B,), target_codes (B, L)."""
        batch = pad_states([self.states[i] for i in rows])
        batch["targets"] = self.targets[rows]
        batch["target_codes"] = self.codes[batch["targets"]]
        return batch


def pad_states(states: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad per-text states (T_i, H) -> hidden (B, T, H) float32 and attention_mask (B, T)."""
    hidden = torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True).float()
    lengths = torch.tensor([len(s) for s in states])
    mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long()
    return {"hidden": hidden, "attention_mask": mask}


def dsi_examples(
    docs: EncodedTexts, doc_rows: Tensor, queries: EncodedTexts, query_rows: Tensor, codes: Tensor
) -> ExampleDataset:
    """Indexing examples (each document -> its row) mixed with retrieval examples (query -> row)."""
    return ExampleDataset(docs.states + queries.states, torch.cat([doc_rows, query_rows]), codes)


# ---------------------------------------------------------------- index and model
def build_ids(
    keys: Sequence[str], embeddings: Tensor, spec: str, seed: int = 0, strategy: str = "extra-level"
) -> tuple[SemanticIDs, Any]:
    """Fit the quantizer on document embeddings (N, D) and resolve collisions -> (SemanticIDs, quantizer)."""
    from semid.quantization import build_quantizer

    quantizer = build_quantizer(spec).fit(embeddings, seed=seed)
    raw = quantizer.encode(embeddings)
    ids = SemanticIDs.from_codes(
        list(keys), raw, quantizer.codebook_sizes, strategy, quantizer_spec=str(quantizer.spec)
    )
    return ids, quantizer


def centroid_codebooks(quantizer: Any, width: int) -> Tensor | None:
    """Residual k-means codebooks (L, K, width) that PromptDSI's centroid head can use, else None.

    Only residual k-means qualifies: its level-l code is the nearest level-l centroid to the residual
    of the same sentence embedding the frozen encoder produces (width = the encoder's hidden size)."""
    books = getattr(quantizer, "codebooks", None)
    if getattr(quantizer.spec, "family", None) != "rqkmeans" or books is None:
        return None
    return books.detach().float().cpu() if books.shape[-1] == width else None


def model_codebook_sizes(ids: SemanticIDs, extra_codes: int) -> list[int]:
    """The index's sizes with room for ``extra_codes`` more disambiguation tokens (added documents)."""
    sizes = list(ids.codebook_sizes)
    if ids.collision is not None and ids.collision.extra_level:
        sizes[-1] += extra_codes
    return sizes


def set_key_center(model: Any, docs: EncodedTexts) -> None:
    """Centre the model's prompt matching on these documents' mean pooled lower states."""
    hidden, masks = [], []
    for lo in range(0, len(docs.states), 256):
        batch = pad_states(docs.states[lo : lo + 256])
        hidden.append(batch["hidden"])
        masks.append(batch["attention_mask"])
    model.set_key_center_(hidden, masks)


def topic_keys(model: Any, docs: EncodedTexts, m: int, seed: int = 0) -> Tensor:
    """m fixed topic keys (m, H): k-means centroids of the documents' matching vectors."""
    from semid.kmeans import kmeans

    vectors = []
    for lo in range(0, len(docs.states), 256):
        batch = pad_states(docs.states[lo : lo + 256])
        vectors.append(model.query_keys(batch["hidden"], batch["attention_mask"]))
    return kmeans(torch.cat(vectors), m, seed=seed)


@torch.no_grad()
def retrieve(
    model: Any,
    trie: PrefixTrie,
    ids: SemanticIDs,
    queries: EncodedTexts,
    k: int,
    num_beams: int = 10,
    batch_size: int = 64,
) -> Tensor:
    """Top-k index rows (Q, k) per query from trie-constrained beam search; -1 where none."""
    out = []
    for lo in range(0, len(queries.states), batch_size):
        codes, _ = model.generate(
            pad_states(queries.states[lo : lo + batch_size]),
            trie,
            num_beams=max(num_beams, k),
            top_k=k,
        )
        out.append(ids.rows_of_codes(codes))
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def retrieval_metrics(
    ranked: Tensor, targets: Tensor, ks: Sequence[int] = (1, 10), seconds: float | None = None
) -> dict[str, float]:
    """Recall@k and MRR@k of ranked rows (Q, k_max) against target rows (Q,), plus queries/s."""
    metrics = compute_metrics(ranked, targets, ks=ks, names=("recall", "mrr"))
    metrics["num_queries"] = float(len(targets))
    if seconds is not None:
        metrics["queries_per_s"] = len(targets) / max(seconds, 1e-9)
    return metrics


def evaluate_queries(
    model: Any,
    trie: PrefixTrie,
    ids: SemanticIDs,
    queries: EncodedTexts,
    targets: Tensor,
    ks: Sequence[int] = (1, 10),
    num_beams: int = 10,
) -> dict[str, float]:
    """Retrieve for every query and score it against its target row."""
    started = time.perf_counter()
    ranked = retrieve(model, trie, ids, queries, max(ks), num_beams)
    return retrieval_metrics(ranked, targets, ks, time.perf_counter() - started)


def train_model(
    model: Any, examples: ExampleDataset, out_dir: Path, config: Any, evaluate: Any = None
) -> Any:
    """Train with the shared loop (resumable) and load its best weights into ``model``."""
    from semid.generator import load_weights
    from semid.training import Trainer

    result = Trainer(
        model, examples, config, out_dir, evaluate=evaluate, collate_fn=examples.collate
    ).fit(resume=True)
    load_weights(model, result.best_path)
    return result


# ---------------------------------------------------------------- run directories
def query_pairs(collection: DocumentCollection, rows: Tensor) -> list[list[str]]:
    """[query, document id] for the first query of each document at ``rows`` that has one."""
    docs = [collection.documents[int(r)] for r in rows]
    return [[d.queries[0], d.id] for d in docs if d.queries]


def write_eval_queries(run: Path, name: str, pairs: list[list[str]]) -> None:
    """Record a part's held-out test queries in ``run/eval_queries.json`` (read by ``semid eval``)."""
    path = run / "eval_queries.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[name] = pairs
    write_json(path, current)


def evaluate_run(
    run: Any, ks: Sequence[int] = (1, 10), num_beams: int | None = None
) -> dict[str, float]:
    """Recall/MRR@k of a loaded retrieval run on every recorded test-query part (d0-test, d1-test, ...)."""
    path = run.path / "eval_queries.json"
    if not path.is_file():
        raise SemidError(
            f"{run.path} has no eval_queries.json; train it with `semid train retriever`"
        )
    parts = json.loads(path.read_text())
    beams = max(num_beams or run.config.get("num_beams", 10), max(ks))
    trie = PrefixTrie.from_codes(run.ids.codes, run.model.codebook_sizes)
    metrics: dict[str, float] = {}
    for name, pairs in parts.items():
        if not pairs:
            continue
        queries = encode_texts(run.model, [q for q, _ in pairs], desc=f"encode {name}")
        targets = run.ids.rows_of_keys([d for _, d in pairs])
        for key, value in evaluate_queries(
            run.model, trie, run.ids, queries, targets, ks, beams
        ).items():
            metrics[f"{name}/{key}"] = value
    return metrics


def evaluate_retriever(run: Any, args: Any) -> dict[str, float]:
    """`semid eval` entry point for runs with task = "retrieve" (args: k, num_beams)."""
    import_generators()
    return evaluate_run(run, args.k, getattr(args, "num_beams", None))


def add_documents(
    run_path: str | os.PathLike,
    collection: DocumentCollection,
    config: Any,
    seed: int = 0,
    test_fraction: float = 0.2,
    topics: int | None = None,
) -> dict[str, Any]:
    """Index new documents in a retrieval run without revisiting old ones; returns a summary.

    IDs come from the saved quantizer (new disambiguation tokens where needed), the trie grows, and
    only a new prompt session (keys: k-means of the new documents) is trained, on the new documents
    and the training share of their queries; the rest of their queries are recorded as test queries."""
    from semid.ids import load_quantizer
    from semid.runs import check_vocabulary, load_run, read_config, write_config

    run_path = Path(run_path)
    import_generators()
    run = load_run(run_path)
    if run.config.get("task") != "retrieve":
        raise SemidError(
            f"{run_path} is not a retrieval run; `--docs` needs one from `semid train retriever`"
        )
    model, ids = run.model, run.ids
    clash = [d for d in collection.ids if d in ids._row_of_key]
    if clash:
        raise SemidError(
            f"{len(clash)} documents are already indexed (e.g. {clash[0]!r}); give new ids"
        )
    docs = encode_texts(model, collection.texts, desc="encode new documents")
    quantizer = load_quantizer(run.index_path)
    start = len(ids)
    ids.add(collection.ids, quantizer.encode(quantizer.check_input(docs.embeddings)))
    check_vocabulary(model, ids, str(run_path))
    rows = torch.arange(start, len(ids))
    # which new documents' queries are trained on: seeded, like the initial split
    g = torch.Generator().manual_seed(seed + len(model.prompts))
    perm = torch.randperm(len(collection), generator=g)
    n_test = round(len(collection) * test_fraction)
    train_local, test_local = perm[n_test:].sort().values, perm[:n_test].sort().values
    with_query = [i for i in train_local.tolist() if collection.documents[i].queries]
    queries = encode_texts(
        model, [collection.documents[i].queries[0] for i in with_query], desc="encode new queries"
    )
    m = topics or max(1, round(model.config.pool_sizes[0] * len(collection) / max(start, 1)))
    session = model.add_prompt_session_(topic_keys(model, docs, min(m, len(collection)), seed))
    model.train_only_session_(session)
    model.use_trie(PrefixTrie.from_codes(ids.codes, model.codebook_sizes))
    before = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if not k.startswith(f"prompts.{session}")
    }
    examples = dsi_examples(docs, rows, queries, rows[with_query], model_codes(model, ids))
    started = time.perf_counter()
    train_model(model, examples, run_path / f"train-session-{session}", config)
    seconds = time.perf_counter() - started
    changed = [
        k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])
    ]
    if changed:  # the promise of incremental indexing: nothing else moved
        raise SemidError(f"internal error: incremental training changed {changed[:3]}")
    model.requires_grad_(True)
    model.save_pretrained(run_path / "model")
    ids.save(run.index_path, quantizer=quantizer)
    name = f"d{session}-test"
    write_eval_queries(run_path, name, query_pairs(collection, test_local))
    cfg = read_config(run_path)
    cfg.pop("versions", None)
    cfg.pop("run_format", None)
    cfg.setdefault("sessions", []).append(
        {
            "documents": len(collection),
            "topics": m,
            "train_seconds": seconds,
            "train": config.to_dict(),
        }
    )
    write_config(run_path, cfg)
    return {
        "session": session,
        "documents": len(collection),
        "test_queries": n_test,
        "topics": m,
        "train_seconds": seconds,
    }


def model_codes(model: Any, ids: SemanticIDs) -> Tensor:
    """The index codes (N, L), checked against the model's vocabulary."""
    sizes = torch.tensor(model.codebook_sizes)
    if (ids.codes >= sizes).any():
        raise SemidError(
            "the index holds codes outside the model's vocabulary; retrain with more --extra-codes"
        )
    return ids.codes


# ---------------------------------------------------------------- training a run (CLI)
@dataclass
class RetrieverSpec:
    """Everything `train_run` needs besides the documents; saved in the run's config.json."""

    dataset: str
    model_config: dict[str, Any]  # PromptDSIConfig fields (codebook_sizes are set from the index)
    train: dict[str, Any]  # TrainConfig fields for training on the initial corpus
    add_train: dict[str, Any]  # TrainConfig fields for `semid index add --docs` (new prompts only)
    quantizer: str = "rqkmeans:3x256"
    extra_codes: int = 64  # spare disambiguation tokens for documents added later
    max_docs: int | None = None
    hold_out: float = (
        0.1  # share of documents held out as the later corpus (written to later.jsonl)
    )
    test_fraction: float = 0.2
    seed: int = 0
    num_beams: int = 10


def train_run(
    out: str | os.PathLike, collection: DocumentCollection, spec: RetrieverSpec
) -> dict[str, Any]:
    """Split, encode, build IDs (quantizer fitted on D0), train PromptDSI on D0 and save a run directory.

    The held-out later corpus is written to ``out/later.jsonl`` for ``semid index add --docs``;
    D0's test queries go to ``eval_queries.json``. Training resumes from ``out/train`` if present."""
    import dataclasses

    from semid.data.documents import write_documents
    from semid.generators.promptdsi import PromptDSI, PromptDSIConfig
    from semid.runs import write_config
    from semid.training import TrainConfig

    out = Path(out)
    coll = collection.subset(
        subset_rows(len(collection), spec.max_docs, spec.seed), collection.name
    )
    split = split_corpus(len(coll), spec.seed, spec.hold_out, spec.test_fraction)
    fields = {f.name for f in dataclasses.fields(PromptDSIConfig)} - {"codebook_sizes"}
    unknown = sorted(set(spec.model_config) - fields)
    if unknown:
        raise SemidError(f"unknown promptdsi config field(s) {unknown}; known: {sorted(fields)}")
    torch.manual_seed(spec.seed)
    probe = PromptDSI(PromptDSIConfig(codebook_sizes=[1], **spec.model_config))
    d0_docs = coll.subset(split.d0)
    docs = encode_texts(probe, d0_docs.texts, desc="encode documents")
    train_rows = [int(r) for r in split.d0_train if coll.documents[int(r)].queries]
    queries = encode_texts(
        probe, [coll.documents[r].queries[0] for r in train_rows], desc="encode queries"
    )
    ids, quantizer = build_ids(d0_docs.ids, docs.embeddings, spec.quantizer, spec.seed)
    ids.save(out / "index", quantizer=quantizer)
    books = centroid_codebooks(quantizer, probe.encoder.config.hidden_size)
    model_config = {"centroid_levels": 0 if books is None else len(books), **spec.model_config}
    if model_config["centroid_levels"] and books is None:
        raise SemidError(
            f"centroid_levels needs an rqkmeans quantizer over the encoder's embeddings, not {spec.quantizer}"
        )
    torch.manual_seed(spec.seed)
    config = PromptDSIConfig(
        codebook_sizes=model_codebook_sizes(ids, spec.extra_codes), **model_config
    )
    model = PromptDSI(config)
    if config.centroid_levels:
        model.set_centroids_(books[: config.centroid_levels])
    set_key_center(model, docs)
    model.set_topic_keys_(topic_keys(model, docs, config.pool_sizes[0], spec.seed))
    model.use_trie(PrefixTrie.from_codes(ids.codes, config.codebook_sizes))
    position = {int(r): i for i, r in enumerate(split.d0)}  # collection row -> index row
    examples = dsi_examples(
        docs,
        torch.arange(len(d0_docs)),
        queries,
        torch.tensor([position[r] for r in train_rows]),
        ids.codes,
    )
    started = time.perf_counter()
    result = train_model(model, examples, out / "train", TrainConfig.from_dict(spec.train))
    seconds = time.perf_counter() - started
    model.save_pretrained(out / "model")
    write_eval_queries(out, "d0-test", query_pairs(coll, split.d0_test))
    if len(split.d1):
        write_documents(out / "later.jsonl", coll.subset(split.d1).documents)
    write_config(
        out,
        {
            "task": "retrieve",
            "model": "promptdsi",
            **dataclasses.asdict(spec),
            "corpus_sha256": collection.sha256,
            "documents": {
                "d0": len(split.d0),
                "d1_held_out": len(split.d1),
                "d0_test_queries": len(split.d0_test),
            },
            "train_seconds": seconds,
            "train_steps": result.steps,
        },
    )
    return {
        "documents": len(split.d0),
        "train_examples": len(examples),
        "steps": result.steps,
        "train_seconds": seconds,
    }


def load_collection(name: str) -> DocumentCollection:
    """A registered document dataset by name (e.g. debian-docs) or a JSONL file path."""
    from semid.data.documents import read_documents
    from semid.data.registry import available_datasets, load_dataset

    if name.endswith(".jsonl") or Path(name).is_file():
        return read_documents(name)
    if name not in available_datasets():
        raise SemidError(
            f"unknown document dataset {name!r}; pass debian-docs or a JSONL file of documents"
        )
    data = load_dataset(name)
    if not isinstance(data, DocumentCollection):
        raise SemidError(f"{name} is not a document collection; pass debian-docs or a JSONL file")
    return data


def add_documents_command(run: str | os.PathLike, docs: str | os.PathLike) -> int:
    """`semid index add RUN --docs NEW.jsonl`: index and learn new documents (new prompts only); prints a summary."""
    from semid.data.documents import read_documents
    from semid.runs import read_config
    from semid.training import TrainConfig

    import_generators()
    cfg = read_config(run)
    summary = add_documents(
        run,
        read_documents(docs),
        TrainConfig.from_dict(cfg.get("add_train", {})),
        seed=cfg.get("seed", 0),
    )
    print(
        f"added {summary['documents']:,} documents to {run} as prompt session {summary['session']} "
        f"({summary['topics']} new topic prompts, {summary['train_seconds']:.0f} s); "
        f"{summary['test_queries']:,} of their queries held out: `semid eval {run} --k 1 10`"
    )
    return 0


def import_generators() -> None:
    """Register the promptdsi generator (until semid.generators imports it itself)."""
    import semid.generators.promptdsi  # noqa: F401
