"""Every bad input is one clean error (issue 14): exit code 2, one `error:` line naming the offending
file, flag or field, no traceback, and nothing written to the runs and indexes it was pointed at.

Each case builds its input in a fresh folder (damaging a copy of a tiny run where it needs one) and
runs the CLI in-process. Cases that need a trained run share two tiny runs built once per module
(ml-100k, 20 users, rqkmeans:2x16, mmgrec; debian-docs, 40 documents, a tiny PromptDSI) and are
marked slow."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from _semid_cli import TINY_DSI
from safetensors.torch import load_file, save_file

import semid.serving
from semid.cli.main import main
from semid.ids import SemanticIDs
from semid.quantization import build_quantizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MMGREC = {"dim": 16, "layers": 1, "decoder_layers": 1}
NOT_UTF8 = b"user,item\n\xff\xfe,\xfa\xfb\n"
ERROR_LINE = re.compile(r"^semid(?: [\w-]+)*: error: ")


class Planted:
    """A pickle payload that would run code on load (never run here: torch refuses the global)."""

    def __reduce__(self):
        return (print, ("pwned",))


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> dict[str, Path]:
    """Tiny runs to copy and damage: a recommender on ml-100k and a PromptDSI on debian-docs."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["index", "build", "--dataset", "ml-100k", "--quantizer", "rqkmeans:2x16",
                 "--out", str(root / "idx")]) == 0  # fmt: skip
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(root / "idx"),
                 "--model", "mmgrec", "--users", "20", "--epochs", "1",
                 "--model-config", json.dumps(TINY_MMGREC), "--out", str(root / "rec")]) == 0  # fmt: skip
    assert main(["train", "retriever", "--dataset", "debian-docs", "--max-docs", "40", "--epochs", "1",
                 "--model-config", json.dumps(TINY_DSI), "--out", str(root / "ret")]) == 0  # fmt: skip
    return {"rec": root / "rec", "ret": root / "ret"}


@pytest.fixture(scope="module")
def index300(tmp_path_factory) -> Path:
    """A bare rqkmeans:2x8 index over 300 random 8-d items (keys i0..i299), with its quantizer."""
    root = tmp_path_factory.mktemp("index300")
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    q = build_quantizer("rqkmeans:2x8").fit(x, seed=0)
    ids = SemanticIDs.from_codes([f"i{j}" for j in range(300)], q.encode(x), q.codebook_sizes)
    ids.save(root / "index", quantizer=q)
    return root / "index"


@dataclass
class Env:
    """A case's folder, with copies of the shared runs on demand; copies are watched for damage."""

    tmp: Path
    sources: dict[str, Path]
    watched: list[Path] = field(default_factory=list)

    def copy(self, name: str) -> Path:
        dst = self.tmp / name
        if not dst.exists():
            shutil.copytree(self.sources[name], dst)
            self.watched.append(dst)
        return dst

    def rec(self) -> Path:
        return self.copy("rec")

    def ret(self) -> Path:
        return self.copy("ret")

    def index(self) -> Path:
        return self.copy("index300")

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def npy(self, name: str, x: np.ndarray, keys: list[str] | None = None) -> tuple[str, str]:
        np.save(self.tmp / name, x.astype(np.float32) if x.dtype.kind == "f" else x)
        keys = [f"k{j}" for j in range(len(x))] if keys is None else keys
        return str(self.tmp / name), str(self.write(name + ".txt", "\n".join(keys) + "\n"))

    def file_under_file(self, name: str) -> str:
        """A path whose parent is a regular file: never writable, even for root."""
        return str(self.write("plain-file", "x") / name)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except writer locks (`.NAME.lock`, taken and released)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".lock" not in p.name}  # fmt: skip


# --- damage helpers ---------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_middle(path: Path) -> None:
    """Bytes changed in place, the size kept (a bad copy, bit rot): the file still parses."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def set_key(path: Path, keys: list[str], value: object) -> None:
    def change(obj):
        inner = obj
        for k in keys[:-1]:
            inner = inner[k]
        inner[keys[-1]] = value
        return obj

    edit_json(path, change)


def float_codes(index: Path) -> None:
    tensors = load_file(str(index / "codes.safetensors"))
    tensors["codes"] = tensors["codes"].float() + 0.5
    save_file(tensors, str(index / "codes.safetensors"))


def codes_out_of_range(index: Path) -> None:
    tensors = load_file(str(index / "codes.safetensors"))
    tensors["codes"][0, 0] = 10_000
    save_file(tensors, str(index / "codes.safetensors"))


def drop_codes(index: Path) -> None:
    tensors = load_file(str(index / "codes.safetensors"))
    save_file({"other": tensors["codes"]}, str(index / "codes.safetensors"))


def plant_pickle(run: Path, name: str, protocol: int = 2) -> str:
    """Replace a checkpoint file by a pickle that calls a global (protocol 2: as torch.save writes)."""
    (ckpt,) = sorted((run / "train" / "checkpoints").glob("step-*"))
    with open(ckpt / name, "wb") as f:
        pickle.dump({"state": Planted()}, f, protocol=protocol)
    return name


def docs_file(env: Env, name: str, docs: list[dict] | None = None, raw: bytes | None = None) -> str:
    if raw is not None:
        return str(env.write(name, raw))
    docs = [{"id": f"d{i}", "text": f"document {i} about kernels", "queries": [f"kernel {i}"]}
            for i in range(12)] if docs is None else docs  # fmt: skip
    return str(env.write(name, "".join(json.dumps(d) + "\n" for d in docs)))


def interactions_csv(env: Env, name: str = "log.csv", header: str = "user,item,timestamp") -> str:
    rows = [f"u{u},m{(u * 7 + j) % 30},{1000 + j}" for u in range(20) for j in range(5)]
    return str(env.write(name, header + "\n" + "\n".join(rows) + "\n"))


def items_csv(env: Env, name: str = "items.csv", header: str = "item,text") -> str:
    return str(
        env.write(
            name, header + "\n" + "\n".join(f"m{j},movie number {j}" for j in range(30)) + "\n"
        )
    )


def run_keys(run: Path) -> list[str]:
    return json.loads((run / "index" / "keys.json").read_text())


# --- the cases --------------------------------------------------------------------------------------
# One case a line reads best as a table: the formatter leaves this section alone.
# fmt: off


@dataclass
class Case:
    """A command line made from an Env, and the word its error line must contain."""

    id: str
    argv: Callable[[Env], list[str]]
    names: str | Callable[[Env], str]
    slow: bool = False


CASES: list[Case] = []


def case(id: str, names, slow: bool = False):
    def wrap(fn):
        CASES.append(Case(id, fn, names, slow))
        return fn

    return wrap


def cases(ids_names_argvs, slow: bool = False) -> None:
    for id, names, argv in ids_names_argvs:
        CASES.append(Case(id, argv, names, slow))


NOWHERE = "/nonexistent/semid-run"
REC = ["train", "recommender", "--dataset", "ml-100k", "--index", NOWHERE, "--model", "mmgrec"]
RET = ["train", "retriever", "--dataset", "debian-docs", "--max-docs", "40", "--model-config", json.dumps(TINY_DSI)]


def rec_args(*more: str) -> Callable[[Env], list[str]]:
    return lambda e: [*REC, "--out", str(e.tmp / "out"), *more]


def ret_args(*more: str) -> Callable[[Env], list[str]]:
    return lambda e: [*RET, "--out", str(e.tmp / "out"), *more]


def a_run_folder(e: Env) -> str:
    """A folder laid out as a run (a manifest beside its index folder)."""
    e.write("run/manifest.json", "{}")
    e.write("run/index/keys.json", "[]")
    return str(e.tmp / "run")


def build_args(*more: str) -> Callable[[Env], list[str]]:
    def argv(e: Env) -> list[str]:
        emb, keys = e.npy("e.npy", np.random.default_rng(0).standard_normal((300, 8)))
        return ["index", "build", "--embeddings", emb, "--keys", keys, "--out", str(e.tmp / "idx"), *more]

    return argv


# argparse usage errors (SystemExit 2)
cases(
    [
        ("usage-build-no-out", "--out", lambda e: ["index", "build", "--dataset", "ml-100k"]),
        ("usage-build-collisions", "--collisions", build_args("--collisions", "bogus")),
        ("usage-build-two-sources", "--embeddings", lambda e: ["index", "build", "--dataset", "ml-100k", "--embeddings", "x.npy", "--out", "o"]),
        ("usage-rec-epochs-text", "--epochs", rec_args("--epochs", "x")),
        ("usage-rec-missing-text", "--missing-text", rec_args("--missing-text", "ignore")),
        ("usage-eval-split", "--split", lambda e: ["eval", NOWHERE, "--split", "train"]),
        ("usage-predict-no-input", "--user", lambda e: ["predict", NOWHERE]),
        ("usage-predict-k-text", "--k", lambda e: ["predict", NOWHERE, "--user", "1", "--k", "ten"]),
        ("usage-serve-device", "--device", lambda e: ["serve", NOWHERE, "--device", "tpu"]),
        ("usage-serve-port-text", "--port", lambda e: ["serve", NOWHERE, "--port", "http"]),
        ("usage-ret-model", "--model", ret_args("--model", "bert")),
        ("usage-unknown-command", "index", lambda e: ["index", "remove", NOWHERE]),
        # a misspelt option is named by the command, with the nearest one it takes
        ("usage-misspelt-option", "semid eval: error: unknown option --kk (did you mean --k?)", lambda e: ["eval", NOWHERE, "--kk", "5"]),
        ("usage-abbreviated-option", "unknown option --user (did you mean --users?)", lambda e: ["eval", NOWHERE, "--user", "196"]),  # it ran as --users 196
        ("usage-misspelt-required", "unknown option --usr (did you mean --user?); one of the arguments", lambda e: ["predict", NOWHERE, "--usr", "1"]),
        ("usage-unknown-option-not-near", "semid predict: error: unknown option --bogus (see semid predict --help)", lambda e: ["predict", NOWHERE, "--user", "1", "--bogus"]),
        # a misspelt value is named with the nearest one too
        ("usage-misspelt-split", "invalid choice: 'tset' (did you mean 'test'?) (choose from", lambda e: ["eval", NOWHERE, "--split", "tset"]),
        ("usage-misspelt-retriever", "invalid choice: 'promptdis' (did you mean 'promptdsi'?)", ret_args("--model", "promptdis")),
        ("misspelt-recommender", "unknown --model 'mmgrc' (did you mean 'mmgrec'?); choose one of", lambda e: [*REC[:-2], "--model", "mmgrc", "--out", str(e.tmp / "out")]),
        ("misspelt-quantizer", "unknown quantizer family 'rqkmean' (did you mean 'rqkmeans'?); known:", build_args("--quantizer", "rqkmean:2x4")),
        ("misspelt-model-config", "unknown field 'layer' (did you mean 'layers'?) for MMGRecConfig", rec_args("--model-config", '{"layer": 3}')),
        # an empty argument ("$RUN" unset) would name the current folder: a dataset to scan, an --out to fill
        ("empty-dataset", "empty argument after --dataset", lambda e: ["index", "build", "--dataset", "", "--out", str(e.tmp / "o")]),
        ("empty-out", "empty argument after --out", lambda e: ["index", "build", "--dataset", "ml-100k", "--out", ""]),
        ("empty-out-equals", "--out is given an empty value", lambda e: ["index", "build", "--dataset", "ml-100k", "--out="]),
        ("empty-run", "empty argument after eval", lambda e: ["eval", ""]),
        # a folder named in Latin-1 (bytes that are not UTF-8: surrogates in Python)
        ("not-utf8-out", "is not UTF-8 text (a file name in another encoding, or a terminal not set to UTF-8?); rename",
         lambda e: ["index", "build", "--dataset", "ml-100k", "--out", str(e.tmp / "caf\udce9")]),
        ("usage-resume-and-no-resume", "argument --no-resume: not allowed with argument --resume", rec_args("--resume", "--no-resume")),
        ("avg-max-docs", "--max-docs is for documents (promptdsi); avg trains on", lambda e: ["train", "retriever", "--dataset", "digits", "--model", "avg", "--out", str(e.tmp / "out"), "--max-docs", "50"]),
        ("avg-extra-codes-negative", "--extra-codes must be >= 0, got -1", lambda e: ["train", "retriever", "--dataset", "digits", "--model", "avg", "--out", str(e.tmp / "out"), "--extra-codes", "-1"]),
        ("avg-hold-out", "--hold-out is for documents", lambda e: ["train", "retriever", "--dataset", "digits", "--model", "avg", "--out", str(e.tmp / "out"), "--hold-out", "0.5"]),
        ("model-config-file", 'it takes the JSON itself, not a file: --model-config "$(cat model.json)"', rec_args("--model-config", "model.json")),
        ("index-is-a-run", "is a run, not an index; its index is", lambda e: [*REC[:5], a_run_folder(e), *REC[6:], "--out", str(e.tmp / "out")]),
        ("index-is-a-file", "is a file, not an index folder; pass the folder", lambda e: ["index", "stats", str(e.write("later.jsonl", "{}\n"))]),
        ("encoder-not-a-model", "is not a model folder: it has no modules.json, and no config.json naming a model_type",
         lambda e: ["index", "build", "--dataset", "ml-100k", "--encoder", str(e.write("idx/config.json", '{"codebook_sizes": [4]}').parent), "--out", str(e.tmp / "o")]),
        ("columns-no-equals", "--columns", rec_args("--columns", "user")),
        ("columns-twice", "--columns", rec_args("--columns", "user=a,user=b")),
    ]
)

# unchecked numbers and model configs of `train recommender` (refused before any data is read)
cases(
    [
        ("rec-batch-size-0", "--batch-size", rec_args("--batch-size", "0")),
        ("rec-users-negative", "--users", rec_args("--users", "-5")),
        ("rec-max-history-0", "--max-history", rec_args("--max-history", "0")),
        ("rec-epochs-0", "--epochs", rec_args("--epochs", "0")),
        ("rec-epochs-negative", "--epochs", rec_args("--epochs", "-3")),
        ("rec-num-beams-0", "--num-beams", rec_args("--num-beams", "0")),
        ("rec-extra-codes-negative", "--extra-codes", rec_args("--extra-codes", "-1")),
        ("rec-lr-0", "--lr", rec_args("--lr", "0")),
        ("rec-lr-nan", "--lr", rec_args("--lr", "nan")),
        ("rec-max-steps-0", "--max-steps", rec_args("--max-steps", "0")),
        ("rec-patience-0", "--patience", rec_args("--patience", "0")),
        ("rec-eval-users-0", "--eval-users", rec_args("--eval-users", "0")),
        ("rec-eval-users-word", "--eval-users", rec_args("--eval-users", "many")),
        ("rec-min-interactions-0", "--min-interactions", rec_args("--min-interactions", "0")),
        ("rec-seed-negative", "--seed", rec_args("--seed", "-1")),
        ("rec-seed-huge", "--seed must be in [0, 4294967295]", rec_args("--seed", "99999999999999999999")),
        ("index-seed-huge", "--seed must be in [0, 4294967295]",
         lambda e: ["index", "build", "--dataset", "ml-100k", "--seed", "99999999999999999999", "--out", str(e.tmp / "o")]),
        ("index-spec-nan", "must be a finite number",
         lambda e: ["index", "build", "--dataset", "ml-100k", "--quantizer", "rqvae:3x16,beta=nan", "--out", str(e.tmp / "o")]),
        ("rec-unknown-model", "--model", lambda e: [*REC[:-1], "gpt", "--out", str(e.tmp / "out")]),
        ("rec-model-config-not-json", "--model-config", rec_args("--model-config", "{dim: 16}")),
        ("rec-model-config-list", "--model-config", rec_args("--model-config", "[16]")),
        ("rec-model-config-unknown-field", "dimm", rec_args("--model-config", '{"dimm": 16}')),
        ("rec-model-config-string-for-int", "dim", rec_args("--model-config", '{"dim": "16"}')),
        ("rec-model-config-float-for-int", "layers", rec_args("--model-config", '{"layers": 1.5}')),
        ("rec-model-config-list-for-bool", "trie_softmax", rec_args("--model-config", '{"trie_softmax": [true]}')),
        ("rec-model-config-sized-field", "field codebook_sizes of mmgrec is set from the index; leave it out", rec_args("--model-config", '{"codebook_sizes": [4, 4]}')),  # it was replaced unsaid
        ("ret-model-config-sized-field", "field codebook_sizes of promptdsi is set from the index", ret_args("--model-config", '{"codebook_sizes": [4, 4]}')),
        ("rec-device-missing-gpu", "--device", rec_args("--device", "cuda:9")),
        ("rec-device-bogus", "--device", rec_args("--device", "gpu")),
        (
            "rec-unknown-dataset",
            "no-such-dataset",
            lambda e: ["train", "recommender", "--dataset", "no-such-dataset", "--index", NOWHERE, "--model", "mmgrec", "--out", str(e.tmp / "out")],
        ),
    ]
)

# sizes whose tensors cannot be allocated: one line, not torch's traceback
cases(
    [
        ("rec-max-history-huge", "out of memory (RuntimeError); ask for less",
         lambda e: ["train", "recommender", "--dataset", "ml-100k", "--index", str(e.rec() / "index"), "--model", "mmgrec",
                    "--users", "20", "--epochs", "1", "--max-history", "99999999999", "--out", str(e.tmp / "out")]),
    ],
    slow=True,
)

# unchecked numbers and configs of `train retriever`
cases(
    [
        ("ret-interactions-dataset", "pass debian-docs, manpages or a documents file",
         lambda e: ["train", "retriever", "--dataset", "ml-100k", "--out", str(e.tmp / "out")]),
        ("ret-max-docs-0", "--max-docs", ret_args("--max-docs", "0")),
        ("ret-patience-0", "--patience must be >= 1", ret_args("--patience", "0")),
        ("img-patience", "--patience is for documents", lambda e: ["train", "retriever", "--dataset", "fashion-mnist", "--model", "avg", "--patience", "3", "--out", str(e.tmp / "o")]),
        ("ret-max-docs-1", "--max-docs", ret_args("--max-docs", "1")),
        ("ret-num-beams-0", "--num-beams", ret_args("--num-beams", "0")),
        ("ret-extra-codes-negative", "--extra-codes", ret_args("--extra-codes", "-1")),
        ("ret-pseudo-queries-negative", "--pseudo-queries", ret_args("--pseudo-queries", "-1")),
        ("ret-hold-out-1.5", "--hold-out", ret_args("--hold-out", "1.5")),
        ("ret-hold-out-negative", "--hold-out", ret_args("--hold-out", "-0.1")),
        ("ret-add-epochs-0", "--add-epochs", ret_args("--add-epochs", "0")),
        ("ret-prompt-lr-0", "--prompt-lr", ret_args("--prompt-lr", "0")),
        ("ret-epochs-0", "--epochs", ret_args("--epochs", "0")),
        ("ret-batch-size-0", "--batch-size", ret_args("--batch-size", "0")),
        ("ret-model-config-unknown-field", "prompt_lenght", ret_args("--model-config", '{"prompt_lenght": 2}')),
        ("ret-empty-prompt-pool", "pool_sizes=[0] must hold at least one prompt", ret_args("--model-config", '{"pool_sizes": [0]}')),
        ("ret-model-config-string-for-int", "prompt_length", ret_args("--model-config", '{"prompt_length": "2"}')),
        ("ret-model-config-list-for-bool", "decoder_on_centroid_levels", ret_args("--model-config", '{"decoder_on_centroid_levels": [true]}')),
        ("ret-index-with-promptdsi", "--index", ret_args("--index", NOWHERE)),
        ("ret-unknown-dataset", "no-such-docs", lambda e: ["train", "retriever", "--dataset", "no-such-docs", "--out", str(e.tmp / "out")]),
        ("ret-quantizer-malformed", "rqkmeans:3by8", ret_args("--quantizer", "rqkmeans:3by8")),
        ("ret-quantizer-unknown-family", "foo", ret_args("--quantizer", "foo:3x8")),
        ("ret-quantizer-too-big", "3x100000", ret_args("--quantizer", "rqkmeans:3x100000")),
        ("ret-dataset-not-documents", "ml-100k", lambda e: ["train", "retriever", "--dataset", "ml-100k", "--out", str(e.tmp / "out")]),
        ("ret-out-under-file", "plain-file", lambda e: [*RET, "--out", e.file_under_file("run")]),
        ("docs-index-collisions", "leave out --collisions",
         lambda e: ["index", "build", "--dataset", docs_file(e, "docs.jsonl"), "--collisions", "reassign",
                    "--out", str(e.tmp / "idx")]),
    ]
)


def ret_docs(name: str, raw: bytes | None = None, docs: list[dict] | None = None) -> Callable[[Env], list[str]]:
    return lambda e: ["train", "retriever", "--dataset", docs_file(e, name, docs, raw), "--model-config",
                      json.dumps(TINY_DSI), "--out", str(e.tmp / "out")]  # fmt: skip


# document files (JSON Lines corpora)
cases(
    [
        ("docs-not-utf8", "docs.jsonl", ret_docs("docs.jsonl", raw=b'{"id": "a", "text": "\xff\xfe"}\n')),
        ("docs-truncated-json", "docs.jsonl", ret_docs("docs.jsonl", raw=b'{"id": "a", "text": "kern\n')),
        ("docs-empty", "docs.jsonl", ret_docs("docs.jsonl", raw=b"")),
        ("docs-no-text", "text", ret_docs("docs.jsonl", docs=[{"id": f"d{i}"} for i in range(5)])),
        ("docs-text-not-string", "text", ret_docs("docs.jsonl", docs=[{"id": f"d{i}", "text": i} for i in range(5)])),
        ("docs-duplicate-ids", "d1", ret_docs("docs.jsonl", docs=[{"id": "d1", "text": "a"}, {"id": "d1", "text": "b"}])),
        ("docs-csv-no-id", "id", ret_docs("docs.csv", raw=b"name,text\na,kernel\nb,audio\n")),
        ("docs-line-not-object", "docs.jsonl", ret_docs("docs.jsonl", raw=b"[1, 2]\n")),
    ]
)

# quantizer specs and embedding inputs of `index build`
cases(
    [
        ("spec-too-many-codes", "3x100000", build_args("--quantizer", "rqkmeans:3x100000")),
        ("spec-too-many-levels", "1000x2", build_args("--quantizer", "rqkmeans:1000x2")),
        ("spec-unknown-family", "foo", build_args("--quantizer", "foo:3x8")),
        ("spec-malformed-shape", "rqkmeans:3by8", build_args("--quantizer", "rqkmeans:3by8")),
        ("spec-no-shape", "rqkmeans", build_args("--quantizer", "rqkmeans")),
        ("spec-zero-levels", "rqkmeans:0x8", build_args("--quantizer", "rqkmeans:0x8")),
        ("spec-one-code", "rqkmeans:3x1", build_args("--quantizer", "rqkmeans:3x1")),
        ("spec-option-without-value", "kmeans", build_args("--quantizer", "rqkmeans:3x8,kmeans")),
        ("spec-option-bad-choice", "kmeans", build_args("--quantizer", "rqkmeans:3x8,kmeans=bogus")),
        ("spec-option-bad-int", "beam", build_args("--quantizer", "rqkmeans:3x8,beam=abc")),
        ("spec-option-unknown", "colour", build_args("--quantizer", "rqkmeans:3x8,colour=red")),
        ("spec-empty", "quantizer", build_args("--quantizer", "")),
        ("spec-rqvae-bad-hidden", "hidden", build_args("--quantizer", "rqvae:2x8,hidden=big")),
        ("build-out-under-file", "plain-file", lambda e: [*build_args()(e)[:-2], "--out", e.file_under_file("idx")]),
        ("build-out-is-file", "plain-file", lambda e: [*build_args()(e)[:-2], "--out", str(e.write("plain-file", "x"))]),
        ("build-plot-under-file", "choose a writable --plot", lambda e: build_args("--plot", e.file_under_file("u.png"))(e)),
        ("build-plot-not-png", "--plot", build_args("--plot", "usage.txt")),
        # /proc takes no new file: no lock can be made there (it read as a lock held by another process)
        ("build-out-in-proc", "cannot write index /proc/semid-idx", lambda e: [*build_args()(e)[:-2], "--out", "/proc/semid-idx"]),
        ("build-interactions-non-graph", "--interactions", lambda e: build_args("--interactions", interactions_csv(e))(e)),
        ("build-popularity-without-dataset", "--collisions", build_args("--collisions", "popularity")),
        ("build-device-missing-gpu", "--device", build_args("--device", "cuda:9")),
        ("build-device-bogus", "--device", build_args("--device", "gpu")),
        (
            "build-keys-with-dataset",
            "--keys",
            lambda e: ["index", "build", "--dataset", "ml-100k", "--keys", str(e.write("k.txt", "a\n")), "--out", str(e.tmp / "idx")],
        ),
    ]
)


def emb_case(x: np.ndarray | None = None, keys: list[str] | None = None, keys_raw: bytes | None = None,
             npy_raw: bytes | None = None) -> Callable[[Env], list[str]]:  # fmt: skip
    def argv(e: Env) -> list[str]:
        arr = np.random.default_rng(0).standard_normal((300, 8)) if x is None else x
        emb, kfile = e.npy("e.npy", arr, keys)
        if npy_raw is not None:
            Path(emb).write_bytes(npy_raw)
        if keys_raw is not None:
            Path(kfile).write_bytes(keys_raw)
        return ["index", "build", "--embeddings", emb, "--keys", kfile, "--quantizer", "rqkmeans:2x8", "--out", str(e.tmp / "idx")]

    return argv


NAN = np.random.default_rng(0).standard_normal((300, 8))
NAN[5, 3] = np.nan
cases(
    [
        (
            "emb-missing-file",
            "nothere.npy",
            lambda e: [
                "index",
                "build",
                "--embeddings",
                str(e.tmp / "nothere.npy"),
                "--keys",
                str(e.write("k.txt", "a\n")),
                "--out",
                str(e.tmp / "i"),
            ],
        ),
        ("emb-not-npy", "e.npy", emb_case(npy_raw=b"this is not numpy\n")),
        ("emb-truncated-npy", "e.npy", emb_case(npy_raw=np.lib.format.magic(1, 0) + b"\x76\x00{'descr': '<f4', 'fo")),
        ("emb-nan", "NaN", emb_case(NAN)),
        ("emb-one-dimensional", "e.npy", emb_case(np.arange(300.0))),
        ("emb-unknown-suffix", "e.bin", lambda e: ["index", "build", "--embeddings", str(e.write("e.bin", b"\0" * 64)), "--out", str(e.tmp / "i")]),
        ("keys-not-utf8", "e.npy.txt", emb_case(keys_raw=b"k0\n\xff\xfe\n" + b"".join(b"k%d\n" % i for i in range(2, 300)))),
        ("keys-empty", "e.npy.txt", emb_case(keys_raw=b"")),
        ("keys-too-few", "e.npy.txt", emb_case(keys=[f"k{i}" for i in range(299)])),
        ("keys-duplicate", "k7", emb_case(keys=[f"k{i}" for i in range(299)] + ["k7"])),
    ]
)


def data_build(e: Env, dataset: str, *more: str) -> list[str]:
    return ["index", "build", "--dataset", dataset, *more, "--out", str(e.tmp / "idx")]


def data_train(e: Env, dataset: str, *more: str) -> list[str]:
    return ["train", "recommender", "--dataset", dataset, *more, "--index", str(e.index()), "--model", "mmgrec",
            "--out", str(e.tmp / "out")]  # fmt: skip


# interactions and item files
cases(
    [
        ("build-unknown-dataset", "no-such-dataset", lambda e: data_build(e, "no-such-dataset")),
        ("build-hierarchy-dataset", "holds a hierarchy", lambda e: data_build(e, "wordnet-mammals")),
        ("build-json-array-log", "write JSON Lines", lambda e: data_build(e, str(e.write("log.json", b'[{"user": "u1", "item": "i1"}]')))),
        ("build-spreadsheet-log", "log.xlsx: unknown extension", lambda e: data_build(e, str(e.write("log.xlsx", b"PK\x03\x04")))),
        ("build-items-with-registered", "--items", lambda e: data_build(e, "ml-100k", "--items", items_csv(e))),
        ("csv-not-utf8", "log.csv", lambda e: data_build(e, str(e.write("log.csv", NOT_UTF8)), "--items", items_csv(e))),
        ("csv-no-item-column", "item", lambda e: data_build(e, interactions_csv(e, header="user,thing,timestamp"), "--items", items_csv(e))),
        ("csv-items-missing", "--items nope.csv not found; give the items file", lambda e: data_build(e, interactions_csv(e), "--items", "nope.csv")),
        ("csv-empty", "log.csv", lambda e: data_build(e, str(e.write("log.csv", b"")), "--items", items_csv(e))),
        ("csv-header-only", "log.csv", lambda e: data_build(e, str(e.write("log.csv", "user,item\n")), "--items", items_csv(e))),
        (
            "csv-bad-timestamps",
            "timestamp",
            lambda e: data_build(e, str(e.write("log.csv", "user,item,timestamp\nu1,m1,yesterday\nu1,m2,today\nu1,m3,x\n")), "--items", items_csv(e)),
        ),
        (
            "items-not-utf8",
            "items.csv",
            lambda e: data_build(e, interactions_csv(e), "--items", str(e.write("items.csv", b"item,text\nm1,\xff\xfe\n"))),
        ),
        ("items-empty", "items.csv", lambda e: data_build(e, interactions_csv(e), "--items", str(e.write("items.csv", b"")))),
        (
            "items-missing-texts",
            "--missing-text",
            lambda e: data_build(e, interactions_csv(e), "--items", str(e.write("items.csv", "item,text\nm1,one\n"))),
        ),
        ("columns-absent", "uid", lambda e: data_build(e, interactions_csv(e), "--items", items_csv(e), "--columns", "user=uid")),
        (
            "encoder-not-an-encoder",
            "not-an-encoder",
            lambda e: data_build(e, interactions_csv(e), "--items", items_csv(e), "--encoder", str(e.write("not-an-encoder/x.txt", "x").parent)),
        ),
        ("build-docs-not-utf8", "docs.jsonl", lambda e: data_build(e, docs_file(e, "docs.jsonl", raw=b'{"id": "a", "text": "\xff"}\n'))),
        ("train-csv-not-utf8", "log.csv", lambda e: data_train(e, str(e.write("log.csv", NOT_UTF8)), "--items", items_csv(e))),
        ("train-csv-no-user-column", "user", lambda e: data_train(e, interactions_csv(e, header="person,item,timestamp"), "--items", items_csv(e))),
        ("train-csv-empty", "log.csv", lambda e: data_train(e, str(e.write("log.csv", b"")))),
    ]
)


def index_case(damage: Callable[[Path], object], *more: str) -> Callable[[Env], list[str]]:
    """`index stats` of a damaged index whose config.json records no checksums (as an index
    written before they were kept), so that the damage meets the checks of each file's content;
    the checksums are tested in test_ids.py."""

    def argv(e: Env) -> list[str]:
        index = e.index()
        damage(index)
        try:  # a damaged config.json stays as the damage left it
            config = json.loads((index / "config.json").read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict) and config.pop("files_sha256", None) is not None:
            (index / "config.json").write_text(json.dumps(config))
        return ["index", "stats", str(index), *more]

    return argv


def write_to(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda index: (index / name).write_bytes(content)


# damaged index folders (`index stats`)
cases(
    [
        ("stats-nonexistent", "nothere", lambda e: ["index", "stats", str(e.tmp / "nothere")]),
        ("stats-a-file", "plain-file", lambda e: ["index", "stats", str(e.write("plain-file", "x"))]),
        ("stats-empty-folder", "empty", lambda e: ["index", "stats", str(e.write("empty/.keep", "").parent)]),
        ("index-config-truncated", "config.json", index_case(lambda i: truncate(i / "config.json"))),
        ("index-config-not-utf8", "config.json", index_case(write_to("config.json", b'{"format_version": "\xff"}'))),
        ("index-config-list", "config.json", index_case(write_to("config.json", b"[1]"))),
        ("index-config-newer", "newer", index_case(lambda i: set_key(i / "config.json", ["format_version"], 99))),
        ("index-config-sizes-string", "codebook_sizes", index_case(lambda i: set_key(i / "config.json", ["codebook_sizes"], "abc"))),
        ("index-config-sizes-short", "config.json", index_case(lambda i: set_key(i / "config.json", ["codebook_sizes"], [8]))),
        ("index-config-collision-bad", "collision", index_case(lambda i: set_key(i / "config.json", ["collision"], {"x": 1}))),
        ("index-config-metadata-list", "metadata", index_case(lambda i: set_key(i / "config.json", ["metadata"], [1]))),
        ("index-keys-truncated", "keys.json", index_case(lambda i: truncate(i / "keys.json"))),
        ("index-keys-not-utf8", "keys.json", index_case(write_to("keys.json", b'["\xff"]'))),
        ("index-keys-dict", "keys.json", index_case(write_to("keys.json", b'{"a": 1}'))),
        ("index-keys-ints", "keys.json", index_case(lambda i: (i / "keys.json").write_text(json.dumps(list(range(300)))))),
        ("index-keys-too-few", "keys.json", index_case(lambda i: edit_json(i / "keys.json", lambda k: k[:-1]))),
        ("index-keys-duplicate", "keys.json", index_case(lambda i: edit_json(i / "keys.json", lambda k: [k[1], *k[1:]]))),
        ("index-codes-truncated", "codes.safetensors", index_case(lambda i: truncate(i / "codes.safetensors"))),
        ("index-codes-float", "codes.safetensors", index_case(float_codes)),
        ("index-codes-missing-tensor", "codes.safetensors", index_case(drop_codes)),
        ("index-codes-out-of-range", "codes.safetensors", index_case(codes_out_of_range)),
        ("index-codes-empty-file", "codes.safetensors", index_case(write_to("codes.safetensors", b""))),
        ("stats-plot-under-file", "choose a writable --plot", lambda e: index_case(lambda i: None, "--plot", e.file_under_file("u.png"))(e)),
        ("stats-plot-not-png", "--plot", index_case(lambda i: None, "--plot", "usage.txt")),
    ]
)


def add_to_index(content: Callable[[Env], list[str]], damage: Callable[[Path], object] = lambda i: None):
    def argv(e: Env) -> list[str]:
        index = e.index()
        damage(index)
        return ["index", "add", str(index), *content(e)]

    return argv


def npy_items(x: np.ndarray, keys: list[str]) -> Callable[[Env], list[str]]:
    def content(e: Env) -> list[str]:
        emb, kfile = e.npy("new.npy", x, keys)
        return ["--items", emb, "--keys", kfile]

    return content


def tsv(raw: bytes) -> Callable[[Env], list[str]]:
    return lambda e: ["--items", str(e.write("new.tsv", raw))]


NEW = np.random.default_rng(1).standard_normal((3, 8))
NEW_NAN = NEW.copy()
NEW_NAN[1, 1] = np.inf
# `index add` to a bare index folder
cases(
    [
        ("add-dimension-mismatch", "new.npy holds 4-d vectors, but the index was built from 8-d", add_to_index(npy_items(np.ones((3, 4)), ["a", "b", "c"]))),
        ("add-infinite", "new.npy", add_to_index(npy_items(NEW_NAN, ["a", "b", "c"]))),
        ("add-keys-already-indexed", "i7", add_to_index(npy_items(NEW, ["a", "i7", "c"]))),
        ("add-keys-repeated", "a", add_to_index(npy_items(NEW, ["a", "b", "a"]))),
        ("add-keys-count", "new.npy.txt", add_to_index(npy_items(NEW, ["a", "b"]))),
        ("add-neither", "--items", add_to_index(lambda e: [])),
        ("add-both", "--docs", add_to_index(lambda e: ["--items", "a.tsv", "--docs", "b.jsonl"])),
        ("add-docs-to-index", "--docs", add_to_index(lambda e: ["--docs", docs_file(e, "d.jsonl")])),
        ("add-device-missing-gpu", "--device", add_to_index(lambda e: [*tsv(b"a\tfirst\n")(e), "--device", "cuda:9"])),
        ("add-tsv-not-utf8", "new.tsv", add_to_index(tsv(b"a\tfirst\nb\t\xff\xfe\n"))),
        ("add-tsv-empty", "new.tsv", add_to_index(tsv(b""))),
        ("add-tsv-no-tab", "new.tsv", add_to_index(tsv(b"a first\n"))),
        ("add-tsv-blank-key", "line 2 is not key<TAB>text", add_to_index(tsv(b"a\tfirst\n  \tsecond\n"))),  # was indexed, never askable
        ("add-tsv-line-after-blanks", "line 3 is not key<TAB>text", add_to_index(tsv(b"a\tfirst\n\nb second\n"))),
        ("add-tsv-blank-lines-only", "holds no items", add_to_index(tsv(b"\n \n"))),
        ("add-tsv-with-keys", "--keys", add_to_index(lambda e: [*tsv(b"a\tfirst\n")(e), "--keys", str(e.write("k.txt", "a\n"))])),
        ("add-to-empty-folder", "empty", lambda e: ["index", "add", str(e.write("empty/.keep", "").parent), *npy_items(NEW, ["a", "b", "c"])(e)]),
        (
            "add-index-codes-truncated",
            "codes.safetensors",
            add_to_index(npy_items(NEW, ["a", "b", "c"]), lambda i: truncate(i / "codes.safetensors")),
        ),
        (
            "add-quantizer-truncated",
            "model.safetensors",
            add_to_index(npy_items(NEW, ["a", "b", "c"]), lambda i: truncate(i / "quantizer" / "model.safetensors")),
        ),
        (
            "add-quantizer-config-truncated",
            "quantizer/config.json is damaged",
            add_to_index(npy_items(NEW, ["a", "b", "c"]), lambda i: truncate(i / "quantizer" / "config.json")),
        ),
        (
            "add-quantizer-missing",
            "has no saved quantizer; build it again with `semid index build`",
            add_to_index(npy_items(NEW, ["a", "b", "c"]), lambda i: shutil.rmtree(i / "quantizer")),
        ),
        ("add-to-missing-folder", "nothere not found; check the path of the run", lambda e: ["index", "add", str(e.tmp / "nothere"), *npy_items(NEW, ["a", "b", "c"])(e)]),
        (
            "add-to-unfinished-training",
            "holds an unfinished training (checkpoints, no manifest.json); run the same `semid train` command again",
            lambda e: ["index", "add", str(e.write("half/train/checkpoints/step-00000004/x", "").parents[3]), *npy_items(NEW, ["a", "b", "c"])(e)],
        ),
    ]
)


# --- cases on trained runs (slow) -------------------------------------------------------------------


def on_rec(cmd: list[str], damage: Callable[[Path], object] = lambda r: None, *more: str):
    def argv(e: Env) -> list[str]:
        run = e.rec()
        damage(run)
        return [*cmd, str(run), *more]

    return argv


def on_ret(cmd: list[str], damage: Callable[[Path], object] = lambda r: None, *more: str):
    def argv(e: Env) -> list[str]:
        run = e.ret()
        damage(run)
        return [*cmd, str(run), *more]

    return argv


EVAL = ["eval"]
rm = lambda name: lambda r: (r / name).unlink()  # noqa: E731
cases(
    [
        ("eval-no-manifest", "manifest.json", on_rec(EVAL, rm("manifest.json"))),
        ("eval-manifest-truncated", "manifest.json", on_rec(EVAL, lambda r: truncate(r / "manifest.json"))),
        ("eval-manifest-not-utf8", "manifest.json", on_rec(EVAL, lambda r: (r / "manifest.json").write_bytes(b'{"task": "\xff"}'))),
        ("eval-manifest-newer", "newer", on_rec(EVAL, lambda r: set_key(r / "manifest.json", ["format_version"], 99))),
        ("eval-manifest-version-newer", "99.0", on_rec(EVAL, lambda r: set_key(r / "manifest.json", ["semid_version"], "99.0.0"))),
        ("eval-manifest-unknown-task", "bogus", on_rec(EVAL, lambda r: set_key(r / "manifest.json", ["task"], "bogus"))),
        ("eval-manifest-parts-list", "manifest.json", on_rec(EVAL, lambda r: set_key(r / "manifest.json", ["parts"], ["index"]))),
        ("eval-config-truncated", "config.json", on_rec(EVAL, lambda r: truncate(r / "config.json"))),
        ("eval-config-not-utf8", "config.json", on_rec(EVAL, lambda r: (r / "config.json").write_bytes(b'{"spec": "\xff"}'))),
        ("eval-spec-unknown-field", "colour", on_rec(EVAL, lambda r: set_key(r / "config.json", ["spec", "colour"], 1))),
        ("eval-spec-string-for-int", "max_history", on_rec(EVAL, lambda r: set_key(r / "config.json", ["spec", "max_history"], "50"))),
        ("eval-spec-zero-history", "max-history", on_rec(EVAL, lambda r: set_key(r / "config.json", ["spec", "max_history"], 0))),
        (
            "eval-spec-list-for-bool",
            "trie_softmax",
            on_rec(EVAL, lambda r: set_key(r / "config.json", ["spec", "model_config", "trie_softmax"], [True])),
        ),
        ("eval-spec-train-batch-size", "batch_size", on_rec(EVAL, lambda r: set_key(r / "config.json", ["spec", "train", "batch_size"], "64"))),
        ("eval-model-config-truncated", "config.json", on_rec(EVAL, lambda r: truncate(r / "model" / "config.json"))),
        ("eval-model-weights-truncated", "model.safetensors", on_rec(EVAL, lambda r: truncate(r / "model" / "model.safetensors"))),
        ("eval-model-weights-overwritten", "changed since", on_rec(EVAL, lambda r: overwrite_middle(r / "model" / "model.safetensors"))),
        ("eval-model-format-newer", "newer", on_rec(EVAL, lambda r: set_key(r / "model" / "config.json", ["format_version"], 99))),
        ("eval-model-config-unknown-field", "colour", on_rec(EVAL, lambda r: set_key(r / "model" / "config.json", ["config", "colour"], 1))),
        ("eval-model-config-string-for-int", "dim", on_rec(EVAL, lambda r: set_key(r / "model" / "config.json", ["config", "dim"], "16"))),
        ("eval-model-unknown-family", "gpt", on_rec(EVAL, lambda r: set_key(r / "model" / "config.json", ["name"], "gpt"))),
        ("eval-index-keys-truncated", "keys.json", on_rec(EVAL, lambda r: truncate(r / "index" / "keys.json"))),
        ("eval-index-codes-float", "codes.safetensors", on_rec(EVAL, lambda r: float_codes(r / "index"))),
        ("eval-index-missing", "index", on_rec(EVAL, lambda r: shutil.rmtree(r / "index"))),
        ("eval-metrics-truncated", "metrics.json", on_rec(EVAL, lambda r: truncate(r / "metrics.json"))),
        ("eval-metrics-list", "metrics.json", on_rec(EVAL, lambda r: (r / "metrics.json").write_text("[1]"))),
        ("eval-run-is-file", "plain-file", lambda e: ["eval", str(e.write("plain-file", "x"))]),
        ("eval-run-nonexistent", "nothere", lambda e: ["eval", str(e.tmp / "nothere")]),
        ("eval-k-0", "--k", on_rec(EVAL, lambda r: None, "--k", "0")),
        ("eval-k-negative", "--k", on_rec(EVAL, lambda r: None, "--k", "5", "-1")),
        ("eval-k-over-catalogue", "--k", on_rec(EVAL, lambda r: None, "--k", "100000")),
        ("eval-beams-below-k", "--num-beams", on_rec(EVAL, lambda r: None, "--k", "10", "--num-beams", "3")),
        ("eval-batch-size-0", "--batch-size", on_rec(EVAL, lambda r: None, "--batch-size", "0")),
        ("eval-cold-share-2", "--cold-share", on_rec(EVAL, lambda r: None, "--cold-share", "2")),
        ("eval-cold-share-negative", "--cold-share", on_rec(EVAL, lambda r: None, "--cold-share", "-0.1")),
        ("eval-cold-prefix-0", "--cold-prefix", on_rec(EVAL, lambda r: None, "--cold-prefix", "0")),
        ("eval-cold-share-nan", "--cold-share", on_rec(EVAL, lambda r: None, "--cold-share", "nan")),
        ("eval-item-mix-nan", "--item-mix", on_rec(EVAL, lambda r: None, "--item-mix", "nan")),
        ("eval-item-mix-inf", "--item-mix", on_rec(EVAL, lambda r: None, "--item-mix", "inf")),
        ("eval-queries-truncated", "eval_queries.json", on_ret(EVAL, lambda r: truncate(r / "eval_queries.json"))),
        ("eval-queries-missing", "eval_queries.json", on_ret(EVAL, rm("eval_queries.json"))),
        ("eval-queries-list", "eval_queries.json", on_ret(EVAL, lambda r: (r / "eval_queries.json").write_text("[1, 2]"))),
    ],
    slow=True,
)

PREDICT = ["predict"]
cases(
    [
        ("predict-unknown-user", "nobody", on_rec(PREDICT, lambda r: None, "--user", "nobody")),
        ("predict-history-unknown-key", "no-such-item", on_rec(PREDICT, lambda r: None, "--history", "1,no-such-item")),
        ("predict-history-empty", "history", on_rec(PREDICT, lambda r: None, "--history", " , ")),
        ("predict-history-comma-hint", "JSON list", on_rec(PREDICT, lambda r: None, "--history", "1,Sixth Sense, The (1999)")),
        ("predict-history-bad-json", "--history is not a valid JSON list", on_rec(PREDICT, lambda r: None, "--history", '["1", "50"')),
        ("predict-history-json-not-keys", "JSON list of item keys", on_rec(PREDICT, lambda r: None, "--history", '[["1"]]')),
        ("predict-history-json-unknown", "unknown item 'ghost'", on_rec(PREDICT, lambda r: None, "--history", '["1", "ghost"]')),
        ("predict-histories-missing", "h.txt", lambda e: on_rec(PREDICT, lambda r: None, "--histories", str(e.tmp / "h.txt"))(e)),
        ("predict-histories-unknown-line", "h.txt line 2: unknown item 'ghost'", lambda e: on_rec(PREDICT, lambda r: None, "--histories", str(e.write("h.txt", '1,50\n["ghost"]\n')))(e)),
        ("predict-histories-null", 'h.jsonl line 1: "history" must be a list of item keys, got null', lambda e: on_rec(PREDICT, lambda r: None, "--histories", str(e.write("h.jsonl", '{"history": null}\n')))(e)),
        ("predict-histories-number", 'h.jsonl line 1: "history" must be a list of item keys, got 50', lambda e: on_rec(PREDICT, lambda r: None, "--histories", str(e.write("h.jsonl", '{"history": 50}\n')))(e)),
        ("predict-histories-no-field", lambda e: f'--histories {e.tmp / "h.jsonl"} line 1 has no "history" field', lambda e: on_rec(PREDICT, lambda r: None, "--histories", str(e.write("h.jsonl", '{"items": ["1"]}\n')))(e)),
        ("predict-k-over-catalogue", "k", on_rec(PREDICT, lambda r: None, "--user", "1", "--k", "100000")),
        ("predict-k-0", "k", on_rec(PREDICT, lambda r: None, "--user", "1", "--k", "0")),
        ("predict-beams-below-k", "--num-beams must be >= --k (5)", on_rec(PREDICT, lambda r: None, "--user", "1", "--k", "5", "--num-beams", "2")),
        ("predict-batch-size-0", "--batch-size", on_rec(PREDICT, lambda r: None, "--user", "1", "--batch-size", "0")),
        ("predict-query-on-recommender", "query", on_rec(PREDICT, lambda r: None, "--query", "a good film")),
        ("predict-users-not-utf8", "users.txt", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.txt", b"1\n\xff\n")))(e)),
        ("predict-users-empty", "users.txt", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.txt", b"\n")))(e)),
        ("predict-users-missing", "users.txt", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.tmp / "users.txt"))(e)),
        ("predict-users-unknown", "ghost", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.txt", "ghost\n")))(e)),
        ("predict-users-header", "users.txt line 1: unknown user 'user_id'; pass a user of the run's data, such as '259', or a history (a header line?", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.txt", "user_id\n1\n")))(e)),  # a .csv reads it as a header
        ("predict-users-csv-without-user-column", 'users.csv has no "user" column', lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.csv", "segment,x\na,b\n")))(e)),
        ("predict-users-unknown-line", "users.txt line 3: unknown user 'ghost'", lambda e: on_rec(PREDICT, lambda r: None, "--users", str(e.write("users.txt", "\n  \nghost\n")))(e)),
        ("predict-out-under-file", "plain-file", lambda e: on_rec(PREDICT, lambda r: None, "--user", "1", "--out", e.file_under_file("p.jsonl"))(e)),
        ("predict-out-is-folder", "is a folder", lambda e: on_rec(PREDICT, lambda r: None, "--history", "1,50", "--out", str(e.tmp))(e)),
        ("predict-out-is-run-config", "is part of the run", lambda e: on_rec(PREDICT, lambda r: None, "--history", "1,50", "--out", str(e.rec() / "config.json"))(e)),
        ("predict-out-in-run-model", "(model)", lambda e: on_rec(PREDICT, lambda r: None, "--history", "1,50", "--out", str(e.rec() / "model" / "p.jsonl"))(e)),
        ("predict-out-in-proc", "/proc/semid-p.jsonl", on_rec(PREDICT, lambda r: None, "--history", "1,50", "--out", "/proc/semid-p.jsonl")),
        ("predict-no-manifest", "manifest.json", on_rec(PREDICT, rm("manifest.json"), "--user", "1")),
        ("predict-data-changed-slice", "users", on_rec(PREDICT, lambda r: set_key(r / "config.json", ["spec", "users"], -1), "--user", "1")),
        ("predict-empty-query", "query", on_ret(PREDICT, lambda r: None, "--query", "")),
        ("predict-blank-query", "query", on_ret(PREDICT, lambda r: None, "--query", "   ")),
        ("predict-user-on-retriever", "user", on_ret(PREDICT, lambda r: None, "--user", "1")),
        ("predict-users-all-on-retriever", "--users", on_ret(PREDICT, lambda r: None, "--users", "all")),
        ("predict-history-on-retriever", "history", on_ret(PREDICT, lambda r: None, "--history", "a,b")),
        ("predict-histories-on-retriever", "histories", lambda e: on_ret(PREDICT, lambda r: None, "--histories", str(e.write("h.txt", "a,b\n")))(e)),
        ("predict-queries-not-utf8", "q.txt", lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.txt", b"\xff\n")))(e)),
        (
            "predict-queries-bad-json",
            "q.jsonl",
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.jsonl", '{"query": "x"\n')))(e),
        ),
        (
            "predict-queries-no-query-field",
            lambda e: f'--queries {e.tmp / "q.jsonl"} line 1 has no "query" field (nor "text")',
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.jsonl", '{"title": "x"}\n')))(e),
        ),
        (
            "predict-queries-bad-json-line",  # a text file may mix plain and JSON lines
            "q.txt line 3 is not valid JSON",
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.txt", 'kernel\n\n{"query": \n')))(e),
        ),
        (  # in JSON Lines every line is an object: a list was answered as the query '["a", "b"]'
            "predict-queries-jsonl-list-line",
            'q.jsonl line 1 is a list, not a JSON object with a "query" field',
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.jsonl", '["a", "b"]\n')))(e),
        ),
        (  # a table without a query column: its rows were answered as queries, header included
            "predict-queries-csv-without-query-column",
            'q.csv has no "query" column',
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.csv", "prompt,lang\nkernel,en\n")))(e),
        ),
        (
            "predict-queries-query-not-text-line",
            "q.jsonl line 2: ",
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.jsonl", '{"query": "x"}\n{"query": 5}\n')))(e),
        ),
        (
            "predict-queries-query-not-text",
            "query",
            lambda e: on_ret(PREDICT, lambda r: None, "--queries", str(e.write("q.jsonl", '{"query": 5}\n')))(e),
        ),
        ("predict-retriever-k-over-catalogue", "k", on_ret(PREDICT, lambda r: None, "--query", "kernel", "--k", "100000")),
    ],
    slow=True,
)

SERVE = ["serve"]
cases(
    [
        ("serve-port-negative", "--port", on_rec(SERVE, lambda r: None, "--port", "-1")),
        ("serve-port-too-big", "--port", on_rec(SERVE, lambda r: None, "--port", "70000")),
        ("serve-max-batch-0", "--max-batch", on_rec(SERVE, lambda r: None, "--max-batch", "0")),
        ("serve-max-wait-negative", "--max-wait-ms", on_rec(SERVE, lambda r: None, "--max-wait-ms", "-1")),
        ("serve-max-wait-nan", "--max-wait-ms", on_rec(SERVE, lambda r: None, "--max-wait-ms", "nan")),
        ("serve-no-manifest", "manifest.json", on_rec(SERVE, rm("manifest.json"))),
        ("serve-model-truncated", "model.safetensors", on_rec(SERVE, lambda r: truncate(r / "model" / "model.safetensors"))),
        ("serve-missing-gpu", "--device", on_rec(SERVE, lambda r: None, "--device", "cuda:9")),
    ],
    slow=True,
)


def rec_on(run_of: Callable[[Env], Path], *more: str, index: Callable[[Env], Path] | None = None):
    """`train recommender` with the fixture run's own arguments, into ``run_of(env)``."""

    def argv(e: Env) -> list[str]:
        run = run_of(e)
        idx = index(e) if index else e.rec() / "index"
        return [
            "train",
            "recommender",
            "--dataset",
            "ml-100k",
            "--index",
            str(idx),
            "--model",
            "mmgrec",
            "--users",
            "20",
            "--epochs",
            "1",
            "--model-config",
            json.dumps(TINY_MMGREC),
            "--out",
            str(run),
            *more,
        ]

    return argv


def damaged_index(damage: Callable[[Path], object]) -> Callable[[Env], Path]:
    def index(e: Env) -> Path:
        idx = e.rec() / "index"
        damage(idx)
        return idx

    return index


def ret_on(run_of: Callable[[Env], Path], *more: str):
    return lambda e: [*RET, "--epochs", "1", "--out", str(run_of(e)), *more]


def with_pickle(run_of: Callable[[Env], Path], name: str, protocol: int = 2) -> Callable[[Env], Path]:
    def run(e: Env) -> Path:
        path = run_of(e)
        plant_pickle(path, name, protocol)
        return path

    return run


def with_cut_json(run_of: Callable[[Env], Path], name: str) -> Callable[[Env], Path]:
    """The run with `train/<name>` cut short, as a disk failure outside semid's writes would leave it."""

    def run(e: Env) -> Path:
        path = run_of(e)
        config = path / "train" / name
        config.write_text(config.read_text()[:10])
        return path

    return run


# training into (or resuming) existing runs, and `index add` to runs
cases(
    [
        ("train-retriever-into-recommender-run", "recommend", ret_on(Env.rec)),
        ("train-recommender-into-retriever-run", "retrieve", rec_on(Env.ret)),
        ("resume-planted-pickle-random-states", "random_states_0.pkl", rec_on(with_pickle(Env.rec, "random_states_0.pkl"))),
        ("resume-planted-pickle-optimizer", "optimizer.bin", rec_on(with_pickle(Env.rec, "optimizer.bin", protocol=4))),
        ("resume-retriever-planted-pickle", "scheduler.bin", ret_on(with_pickle(Env.ret, "scheduler.bin"))),
        ("resume-changed-model-config", "dim", rec_on(Env.rec, "--model-config", json.dumps({**TINY_MMGREC, "dim": 32}))),
        ("resume-cut-train-config", "train_config.json is damaged", rec_on(with_cut_json(Env.rec, "train_config.json"))),
        ("resume-cut-model-config", "model_config.json is damaged", rec_on(with_cut_json(Env.rec, "model_config.json"))),
        ("resume-changed-history-length", "max_distance", rec_on(Env.rec, "--max-history", "10")),
        ("train-out-not-a-run", "notes.txt", rec_on(lambda e: e.write("mine/notes.txt", "mine").parent)),
        ("train-out-under-file", "plain-file", rec_on(lambda e: Path(e.file_under_file("run")))),
        (
            "train-index-codes-truncated",
            "codes.safetensors",
            rec_on(lambda e: e.tmp / "out", index=damaged_index(lambda i: truncate(i / "codes.safetensors"))),
        ),
        ("train-index-codes-float", "codes.safetensors", rec_on(lambda e: e.tmp / "out", index=damaged_index(float_codes))),
        ("train-index-not-an-index", "junk", rec_on(lambda e: e.tmp / "out", index=lambda e: e.write("junk/a.txt", "a").parent)),
        ("train-index-of-other-items", "not in the index", rec_on(lambda e: e.tmp / "out", index=Env.index)),
        ("train-out-inside-index", "is inside --index", rec_on(lambda e: Env.index(e) / "run", index=Env.index)),
        ("build-out-is-a-runs-index", "is the index of the run", lambda e: [*build_args()(e)[:-2], "--out", str(e.rec() / "index")]),
        (
            "train-recommender-other-model",
            "mmgrec",
            lambda e: [
                "train",
                "recommender",
                "--dataset",
                "ml-100k",
                "--index",
                str(e.rec() / "index"),
                "--model",
                "sasrec",
                "--users",
                "20",
                "--epochs",
                "1",
                "--out",
                str(e.rec()),
            ],
        ),
        ("add-folder-to-rec-run", "is a folder; give a file", lambda e: on_rec(["index", "add"], lambda r: None, "--items", str(e.tmp))(e)),
        (
            "add-tsv-not-utf8-to-run",
            "new.tsv",
            lambda e: on_rec(["index", "add"], lambda r: None, "--items", str(e.write("new.tsv", b"a\tfirst\nb\t\xff\xfe\n")))(e),
        ),
        (
            "add-tsv-indexed-key-to-run",
            "'1'",
            lambda e: on_rec(["index", "add"], lambda r: None, "--items", str(e.write("new.tsv", "1\tToy Story again\n")))(e),
        ),
        (
            "add-tsv-repeated-key-to-run",
            "dup",
            lambda e: on_rec(["index", "add"], lambda r: None, "--items", str(e.write("new.tsv", "dup\ta film\nnew\tb film\ndup\tc\n")))(e),
        ),
        ("add-docs-to-recommender", "--docs", lambda e: on_rec(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl"))(e)),
        ("add-items-to-retriever", "--docs", lambda e: on_ret(["index", "add"], lambda r: None, "--items", str(e.write("new.tsv", "a\tb\n")))(e)),
        # a run's own index grown alone: its model and document files no longer matched it (exit 0)
        ("add-to-a-recommenders-index", "is part of the run", lambda e: ["index", "add", str(e.rec() / "index"), "--items", str(e.write("new.tsv", "new\tA new film\n"))]),
        ("add-to-a-retrievers-index", "semid index add", lambda e: ["index", "add", str(e.ret() / "index"), "--items", str(e.write("new.tsv", "a\tb\n"))]),
        (
            "add-docs-with-an-encoder",
            "leave out --encoder",
            lambda e: on_ret(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl"), "--encoder", str(e.tmp))(e),
        ),
        (
            "add-docs-not-utf8",
            "d.jsonl",
            lambda e: on_ret(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl", raw=b'{"id": "x", "text": "\xff"}\n'))(e),
        ),
        (
            "add-docs-truncated",
            "d.jsonl",
            lambda e: on_ret(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl", raw=b'{"id": "x", "te'))(e),
        ),
        ("add-docs-empty", "d.jsonl", lambda e: on_ret(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl", raw=b""))(e)),
        (
            "add-docs-already-indexed",
            "already indexed",
            lambda e: on_ret(["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl", [{"id": run_keys(e.ret())[0], "text": "again"}]))(e),
        ),
        (
            "add-docs-repeated",
            "twice",
            lambda e: on_ret(
                ["index", "add"], lambda r: None, "--docs", docs_file(e, "d.jsonl", [{"id": "twice", "text": "a"}, {"id": "twice", "text": "b"}])
            )(e),
        ),
        (
            "add-to-run-with-damaged-index",
            "keys.json",
            lambda e: on_rec(
                ["index", "add"], lambda r: truncate(r / "index" / "keys.json"), "--items", str(e.write("new.tsv", "new\tA new film\n"))
            )(e),
        ),
        (
            "add-encoder-not-an-encoder",
            "not-an-encoder",
            lambda e: on_rec(
                ["index", "add"],
                lambda r: None,
                "--items",
                str(e.write("new.tsv", "new\tA new film\n")),
                "--encoder",
                str(e.write("not-an-encoder/x.txt", "x").parent),
            )(e),
        ),
    ],
    slow=True,
)


# fmt: on
# an option that only works with another, given alone (read once the run has loaded)
cases(
    [
        (
            "cold-prefix-alone",
            "give --cold-share too",
            lambda e: ["eval", str(e.rec()), "--cold-prefix", "2"],
        )
    ],
    slow=True,
)


# --- the test ---------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


def _params():
    for c in CASES:
        yield pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", _params())
def test_bad_input_is_one_clean_error(c: Case, tmp_path, capsys, monkeypatch, request, index300):
    sources = {"index300": index300}
    if c.slow:
        sources |= request.getfixturevalue("runs")
    env = Env(tmp_path, sources)
    # a command that gets past its checks must not start a server: record it as accepted instead
    monkeypatch.setattr(semid.serving, "serve", lambda *a, **k: None)
    argv = c.argv(env)
    before = {str(p): snapshot(p) for p in env.watched}
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    out_existed = out is not None and out.exists()
    code, err = run_cli(argv, capsys)
    assert "Traceback" not in err, err
    assert code == 2, f"accepted silently (exit {code}): {argv}\n{err}"
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, err
    if c.id.startswith("usage-"):  # the error line alone: no usage block above it
        assert err.count("\n") == 1, err
    names = c.names(env) if callable(c.names) else c.names
    assert names.lower() in lines[0].lower(), f"{lines[0]!r} does not name {names!r}"
    for path, files in before.items():
        assert snapshot(Path(path)) == files, f"{path} changed"
    if out is not None and not out_existed:
        assert not out.exists(), f"the failed command left {out} behind"


def test_a_relative_run_path_that_is_not_there_names_the_folder_it_was_read_from(
    tmp_path, monkeypatch, capsys
):
    """`semid eval runs/x` from another folder said "runs/x is not a folder; train a run", which
    hid that the path was read from the wrong folder."""
    monkeypatch.chdir(tmp_path)
    for argv in (["eval", "runs/x"], ["index", "add", "runs/x", "--items", "new.tsv"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"semid: error: runs/x not found (relative to {tmp_path}); check the path"
        )
        assert err.count("\n") == 1
