"""`semid serve`: an HTTP JSON API over a loaded run, with request batching.

Layout: one `Predictor` per loaded run (the task layer implements it); a `BatchingPredictor` in front
of it owns one worker thread per model replica (one by default; ``semid serve --workers N`` runs N
model processes, see :mod:`semid.model_process`). Each worker takes requests from one shared FIFO
queue until ``max_batch`` inputs are gathered or ``max_wait_ms`` has passed since the first was
queued (requests that queued while the workers were busy go at once), groups them by
(k, num_beams) and calls its replica's ``predict`` once per group (in chunks of at most
``max_batch`` inputs; those of a request whose client hung up are dropped between chunks). A
request holds at most ``max_inputs`` inputs, so one client cannot hold a worker for long. Groups
are needed because
beam search with k beams is not a prefix of beam search with more beams, so trimming a larger k
would change answers. Each request's inputs are validated with ``check_input`` on the caller's
thread before they are queued, so one bad input fails only its own request.

HTTP (FastAPI, served by uvicorn):
  POST /predict  {"users": [ID, ...]} | {"histories": [[KEY, ...], ...]} | {"queries": [TEXT, ...]}
                 | {"inputs": [{...}, ...]} (an input may carry its caller's "id", echoed in its
                 answer's "input"), plus optional "k" (default 10), "num_beams" and
                 "texts" (true: each answer also has its items' or documents' "texts")
                 -> {"results": [{"input", "keys", "scores", "ids"}, ...]}, one per input, in order
                 (an answer also has a one-line "note" when its input was not read as given: a
                 sasrec run leaves out history items added after training), and a "note" when
                 some inputs got fewer than k answers (why, in one line)
  GET  /health   -> {"status": "ok"}
  GET  /info     -> predictor.info() (task, the body fields it answers, index size, ...), default_k
                 and max_k, semid/torch versions, batching settings (workers too) and counters
Bad requests answer 400 with {"error": "one line"} (413 for a body over 16 MiB); a user asked for
while the run's data log cannot be read answers 503 (the server's files, not the request). SIGINT/SIGTERM (uvicorn) stop accepting
connections, let in-flight requests finish (for at most ``shutdown_timeout_s``, 10 s by default),
then the lifespan shutdown stops the worker.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import math
import queue
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from semid import __version__, notes
from semid.answer_texts import check_texts, with_texts
from semid.defaults import DEFAULT_K, MAX_INPUTS, SHUTDOWN_TIMEOUT_S, usable_cores
from semid.errors import RunDataError, SemidError, StoppedMidBatch
from semid.json_values import as_json, is_integer, is_key
from semid.model_process import ProcessPredictor
from semid.sockets import bind_socket, listen
from semid.tasks.base import REQUEST_FIELDS, with_input_id
from semid.wording import short_answers_note


def routes(takes: Sequence[str] | None) -> str:
    """What the server answers, its /predict example in the first list field the run ``takes``
    ("users", "queries"; "inputs" when it does not say)."""
    field = takes[0] if takes else "inputs"
    return (f'the server answers POST /predict (a JSON body such as {{"{field}": [...], "k": 10}}), '
            "GET /health and GET /info")  # fmt: skip


MAX_BODY_BYTES = 16 * 2**20  # a /predict body larger than this is refused (413), not read
logger = logging.getLogger("semid.serving")
# body field -> the input dict each of its elements becomes
_LIST_FIELDS = {many: one for one, many in REQUEST_FIELDS.items()}
_PLURALS = {**REQUEST_FIELDS, "input": "inputs"}


@runtime_checkable
class Predictor(Protocol):
    """What `semid serve` needs from a loaded run. ``check_input``, ``info``, ``max_k`` and
    ``item_texts`` are called from several server threads at once while ``predict`` runs on the
    batching thread, so they must be thread-safe: a cache they fill lazily needs a lock. Answers
    hold plain JSON types (str, int, float, list, dict)."""

    task: str  # "recommend" | "retrieve" | "text2image"

    def info(self) -> dict[str, Any]:
        """Task, model, index size, num_beams default, versions, ..."""
        ...

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """Validate (and normalise) one input: recommend {"user": ID} or {"history": [KEY, ...]},
        retrieval {"query": TEXT}. Raises SemidError with a one-line message on bad input."""
        ...

    def predict(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """One answer per input, best first: {"input", "keys": [...], "scores": [...],
        "ids": [[...], ...]} and, when the input was not read as given, a one-line "note".
        Raises SemidError if k > max_k() or num_beams < k."""
        ...

    def max_k(self) -> int:
        """Catalogue size: the largest k that predict accepts."""
        ...

    def read_data(self) -> None:
        """Read the data that answering needs besides the run, before the first request."""
        ...

    def unsearched_note(self) -> str | None:
        """What of the run's own data its answers leave out, said when serving starts."""
        ...

    def resolve(self, checked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Checked inputs in a form another copy of the run answers without reading its data
        (a model process is sent these)."""
        ...

    def predict_resolved(
        self, resolved: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """``predict`` of another copy's resolved inputs."""
        ...

    def item_texts(self, keys: Sequence[str]) -> list[str] | None:
        """Each key's text ("" for one without), or None when the run has no texts."""
        ...


class BatcherClosed(RuntimeError):
    """A request reached a BatchingPredictor after close()."""


class Answers(Future):
    """A request's answers to come; ``abandon`` (its client hung up) cancels it while queued and
    drops its inputs not yet run once a batch runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def abandon(self) -> None:
        """Nobody will read these answers: cancel, or stop computing them between chunks."""
        if not self.cancel():
            self.abandoned.set()


@dataclass
class _Request:
    inputs: list[dict[str, Any]]
    k: int
    num_beams: int | None
    future: Answers = field(default_factory=Answers)
    queued_at: float = field(default_factory=time.monotonic)


_STOP = object()


class BatchingPredictor:
    """Runs concurrent requests to ``predictor`` as batched ``predict`` calls on a worker thread.

    ``replicas``: more predictors of the same run (e.g. model processes); each gets its own worker
    thread, and a batch goes to whichever is free. ``predictor`` checks inputs and predicts too."""

    def __init__(
        self,
        predictor: Predictor,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        replicas: list[Predictor] | None = None,
        max_inputs: int = MAX_INPUTS,
    ) -> None:
        if not is_integer(max_batch) or max_batch < 1:
            raise SemidError(f"max_batch (--max-batch) must be an integer >= 1, got {max_batch!r}")
        if not is_integer(max_inputs) or max_inputs < 1:
            raise SemidError(
                f"max_inputs (--max-inputs) must be an integer >= 1, got {max_inputs!r}"
            )
        if not (math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise SemidError(
                f"max_wait_ms (--max-wait-ms) must be a finite number >= 0, got {max_wait_ms!r}"
            )
        self.predictor = predictor
        self.workers = [predictor, *(replicas or [])]
        self.max_batch = max_batch
        self.max_inputs = max_inputs
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit against close: nothing is queued after _STOP
        self._abandoned = threading.Event()  # set by a forced stop: close() waits no more
        self._gathering = threading.Lock()  # held by the worker that is gathering a batch
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.stats = {"requests": 0, "inputs": 0, "predict_calls": 0, "batches": 0}

    def start(self) -> None:
        """Start the worker threads (idempotent; submit starts them too)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise BatcherClosed("the batching worker is stopped")
        if not self._threads:
            self._threads = [
                threading.Thread(
                    target=self._work, args=(worker,), name="semid-batcher", daemon=True
                )
                for worker in self.workers
            ]
            for thread in self._threads:
                thread.start()

    @property
    def running(self) -> bool:
        """True while a worker thread is alive."""
        return any(thread.is_alive() for thread in self._threads)

    def validate(
        self, inputs: list[dict[str, Any]], k: Any, num_beams: Any = None, field: str = "inputs"
    ) -> list[dict[str, Any]]:
        """Check k, num_beams and each input (``check_input``); return the normalised inputs.
        Raises SemidError naming the field, e.g. ``users[3]: unknown user 'x'``."""
        if not is_integer(k) or k < 1:
            raise SemidError(f"k must be an integer >= 1, got {as_json(k)}")
        max_k = self.predictor.max_k()
        if k > max_k:
            raise SemidError(f"k={k} is larger than the catalogue ({max_k} items); ask for fewer")
        if num_beams is not None and (not is_integer(num_beams) or num_beams < k):
            raise SemidError(f"num_beams must be an integer >= k={k}, got {as_json(num_beams)}")
        if not inputs:
            raise SemidError(f"{field} is empty; send at least one input")
        if len(inputs) > self.max_inputs:
            raise SemidError(
                f"{field} holds {len(inputs):,} inputs; the server takes at most "
                f"{self.max_inputs:,} a request (--max-inputs): send them in several requests, or "
                "answer a file of them with `semid predict`"
            )
        checked = []
        for i, item in enumerate(inputs):
            try:
                checked.append(with_input_id(item, self.predictor.check_input(item)))
            except SemidError as e:  # a RunDataError stays one (503, not 400)
                kind = RunDataError if isinstance(e, RunDataError) else SemidError
                raise kind(f"{field}[{i}]: {e}") from None
        return checked

    def submit(
        self, inputs: list[dict[str, Any]], k: Any, num_beams: Any = None, field: str = "inputs"
    ) -> Answers:
        """Validate now (SemidError on bad input), then queue; the future resolves to the answers."""
        req = _Request(self.validate(inputs, k, num_beams, field), k, num_beams)
        with self._lock:
            self._start_locked()
            self._queue.put(req)
        return req.future

    def predict(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """Blocking form of submit: the answers for ``inputs``, batched with other callers'."""
        return self.submit(inputs, k, num_beams).result()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer the queued ones, stop the worker threads: wait for them up
        to ``timeout`` seconds (None: until they end), or until `abandon` is called."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            for _ in threads:  # one stop mark per worker, queued after every request
                self._queue.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            while thread.is_alive() and not self._abandoned.is_set():
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0:
                    return
                thread.join(left)

    def abandon(self) -> None:
        """Stop waiting for the worker threads (a forced stop): `close`, also one under way,
        returns at once, and the batches in flight are given up."""
        self._abandoned.set()

    def _work(self, predictor: Predictor) -> None:
        while True:
            # One worker gathers at a time: requests that arrive fill its batch instead of being
            # split among the idle workers into small batches, which cost more per input.
            with self._gathering:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch, stop = self._gather(first)
            self._run(predictor, batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """Requests until max_batch inputs, or until the queue is empty once max_wait has passed
        since the first was queued; (batch, stop seen). The wait counts from queueing, not from
        when the worker got free, so requests that queued during the previous batch run at once
        instead of waiting ``max_wait_ms`` again."""
        batch, n = [first], len(first.inputs)
        deadline = first.queued_at + self.max_wait_s
        while n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                req = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if req is _STOP:
                return batch, True
            batch.append(req)
            n += len(req.inputs)
        return batch, False

    def _run(self, predictor: Predictor, batch: list[_Request]) -> None:
        groups: dict[tuple[int, int | None], list[_Request]] = {}
        for req in batch:
            groups.setdefault((req.k, req.num_beams), []).append(req)
        with self._lock:
            self.stats["batches"] += 1
        for (k, num_beams), reqs in groups.items():
            live = [r for r in reqs if r.future.set_running_or_notify_cancel()]
            try:
                answers = self._answer(predictor, live, k, num_beams)
            # Not swallowed: the error goes to every request of the group (the HTTP handler
            # re-raises it); catching it here keeps the one worker thread alive for other requests.
            except Exception as e:  # noqa: BLE001
                for r in live:
                    r.future.set_exception(e)
                continue
            answered = [r for r in live if not r.future.abandoned.is_set()]
            with self._lock:
                self.stats["requests"] += len(answered)
                self.stats["inputs"] += sum(len(r.inputs) for r in answered)
            for r in live:  # an abandoned request's answers are cut short: nobody reads them
                r.future.set_result(answers[id(r)])

    def _answer(self, predictor: Predictor, reqs: list[_Request], k: int,
                num_beams: int | None) -> dict[int, list[dict[str, Any]]]:  # fmt: skip
        """Answers of each request (by ``id``), in chunks of at most ``max_batch`` inputs; the
        inputs of a request abandoned meanwhile are left out of the chunks after it."""
        answers: dict[int, list[dict[str, Any]]] = {id(r): [] for r in reqs}
        pending = [(r, x) for r in reqs for x in r.inputs]
        for start in range(0, len(pending), self.max_batch):
            chunk = [(r, x) for r, x in pending[start : start + self.max_batch]
                     if not r.future.abandoned.is_set()]  # fmt: skip
            if not chunk:
                continue
            out = predictor.predict([x for _, x in chunk], k, num_beams)
            with self._lock:
                self.stats["predict_calls"] += 1
            if len(out) != len(chunk):
                raise RuntimeError(f"predictor returned {len(out)} answers for {len(chunk)} inputs")
            for (r, _), answer in zip(chunk, out, strict=True):
                answers[id(r)].append(answer)
        return answers


def parse_request(
    body: Any, takes: Sequence[str] | None = None
) -> tuple[str, list[dict[str, Any]], Any, Any, bool]:
    """A /predict body -> (field, inputs, k (None: not given), num_beams, texts); SemidError on a wrong shape or
    type. ``takes``: the list fields the served run answers (its /info "inputs"), which the
    errors name; None: every field."""
    listed = ", ".join(takes or (*_LIST_FIELDS, "inputs"))
    if not isinstance(body, dict):
        raise SemidError('the body must be a JSON object such as {"users": [...], "k": 10}')
    fields = [f for f in (*_LIST_FIELDS, "inputs") if f in body]
    unknown = sorted(set(body) - {*_LIST_FIELDS, "inputs", "k", "num_beams", "texts"})
    singular = next((f for f in unknown if f in _PLURALS), None)
    if singular is not None:  # {"user": "196"}, as `semid predict --user 196` reads
        value = body[singular]  # one input, or already a list of them (a history is one list)
        inputs = value if isinstance(value, list) and singular != "history" else [value]
        example = json.dumps(
            {_PLURALS[singular]: inputs, **({"k": body["k"]} if "k" in body else {})}
        )
        raise SemidError(f"unknown field {singular!r}: /predict takes lists, as {example[:120]}")
    if unknown:
        raise SemidError(
            f"unknown field(s) {unknown}; use one of {listed}, and k, num_beams, texts"
        )
    texts = body.get("texts", False)
    if not isinstance(texts, bool):
        raise SemidError(f"texts must be true or false, got {as_json(texts)}")
    if len(fields) != 1:
        raise SemidError(f"give exactly one of {listed} (got {fields or 'none'})")
    name = fields[0]
    values = body[name]
    if not isinstance(values, list):
        raise SemidError(f"{name} must be a list, got {as_json(values)}")
    for i, v in enumerate(values):
        bad = (
            (name == "users" and not is_key(v))
            or (name == "histories" and not isinstance(v, list))
            or (name == "queries" and not isinstance(v, str))
            or (name == "inputs" and not isinstance(v, dict))
        )
        if bad:
            expected = {"users": "a string or integer", "histories": "a list of item keys",
                        "queries": "a string", "inputs": "an object"}[name]  # fmt: skip
            raise SemidError(f"{name}[{i}] must be {expected}, got {as_json(v)}")
    inputs = values if name == "inputs" else [{_LIST_FIELDS[name]: v} for v in values]
    if "k" in body and body["k"] is None:  # left out means the default; null is no number
        raise SemidError("k must be an integer >= 1, got null; leave k out for the default")
    return name, inputs, body.get("k"), body.get("num_beams"), texts


class RepeatedField(ValueError):
    """A JSON object of a request names one field twice (JSON keeps the last, in silence)."""


def _fields_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields as a dict; RepeatedField when one is named twice."""
    fields = dict(pairs)
    if len(fields) < len(pairs):
        repeated = next(name for i, (name, _) in enumerate(pairs) if name in dict(pairs[:i]))
        raise RepeatedField(f'the body names the field "{repeated}" twice in one object (the '
                            "first would be lost); send each field once")  # fmt: skip
    return fields


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _versions() -> dict[str, str]:
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {"semid_version": __version__, "torch_version": torch_version}


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to exceed ``limit`` bytes (by its
    Content-Length, or while reading a chunked one), so a huge body is never held in memory."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


GONE = 499  # the status of a request whose client hung up (nginx's): no one reads it
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


async def answers_unless_gone(request: Request, future: Answers) -> list[dict[str, Any]] | None:
    """The answers of a submitted request, or None once its client hangs up first: its inputs are
    then dropped from the queue, or from the chunks not yet run of a batch running them."""
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                future.abandon()
                return None
    except asyncio.CancelledError:  # a stop that does not wait: nobody reads the answers
        future.abandon()
        waiting.cancel()  # else a batch failing later logs "exception was never retrieved"
        raise


def create_app(
    predictor: Predictor,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    replicas: list[Predictor] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_inputs: int = MAX_INPUTS,
) -> FastAPI:
    """The FastAPI app serving ``predictor`` (and ``replicas``, see BatchingPredictor); the routes
    are in the module docstring. A /predict body over ``max_body_bytes`` is answered 413. Reads
    ``predictor.info()`` once, for the fields its errors name: a `ProcessPredictor` is launched
    first (`ProcessPredictor.launch`)."""
    batcher = BatchingPredictor(predictor, max_batch, max_wait_ms, replicas, max_inputs)
    takes = predictor.info().get("inputs")  # the list fields the run answers, named in errors

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn calls this after in-flight requests are answered; close() joins the workers,
        # unless a forced stop (`_Server`) abandons them
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    # no /docs, /redoc or /openapi.json: pages the docs do not name, whose assets come from a CDN
    app = FastAPI(title="semid", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.batcher = batcher

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):  # a wrong path or method: name the ones served
            return _error(exc.status_code, f"{request.method} {request.url.path} is not served; "
                          f"{routes(takes)}")  # fmt: skip
        return _error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(e.get("msg", "invalid request") for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # a bug outside /predict (e.g. in predictor.info): still one JSON line; uvicorn logs it
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); see the server log")

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: load balancers' health checks
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/info", methods=["GET", "HEAD"])
    async def info() -> dict[str, Any]:
        batching = {
            "max_batch": batcher.max_batch,
            "max_inputs": batcher.max_inputs,
            "max_wait_ms": 1000 * batcher.max_wait_s,
            "workers": len(batcher.workers),
        }
        # in a thread, as every call that may load a changed run again: the event loop stays free
        run_info, max_k = await asyncio.to_thread(lambda: (predictor.info(), predictor.max_k()))
        limits = {"default_k": min(DEFAULT_K, max_k), "max_k": max_k}
        return {"model_process": False, **run_info, **limits, **_versions(),
                "batching": {**batching, **batcher.stats}}  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            return await answer(request)
        except asyncio.CancelledError:  # still open when the shutdown timeout ran out
            return _error(503, "the server is shutting down; send the request again once it runs")

    async def answer(request: Request) -> Any:
        try:
            raw = await read_body(request, max_body_bytes)
        except ClientDisconnect:  # hung up mid-body: an everyday event, not a server error
            return Response(status_code=GONE)
        if raw is None:
            return _error(413, f"the body is larger than {max_body_bytes:,} bytes; "
                               "send the inputs in several requests")  # fmt: skip
        if not raw.strip():
            field = takes[0] if takes else "inputs"
            return _error(
                400, f'the body is empty; send a JSON object such as {{"{field}": [...]}}'
            )
        try:
            body = json.loads(raw, object_pairs_hook=_fields_once)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return _error(400, f"the body is not valid JSON: {e}")
        except RepeatedField as e:
            return _error(400, str(e))
        except RecursionError:  # valid JSON nested deeper than the parser's recursion limit
            return _error(400, "the body nests JSON too deep; send a flat object such as "
                               '{"users": [...], "k": 10}')  # fmt: skip
        try:
            name, inputs, k, num_beams, texts = parse_request(body, takes)
            if texts:  # in a thread: the first call reads the texts
                await asyncio.to_thread(check_texts, predictor, '"texts"')
            if k is None:  # not asked: DEFAULT_K, or the whole catalogue when it is smaller
                k = min(DEFAULT_K, await asyncio.to_thread(predictor.max_k))
            # checking the inputs may read a changed run or log again: not on the event loop,
            # which keeps answering /health and reading other requests meanwhile
            future = await asyncio.to_thread(batcher.submit, inputs, k, num_beams, name)
        except RunDataError as e:  # the server's files, not the request: a client may retry
            return _error(503, f"the server cannot read its run's data: {e}")
        except SemidError as e:
            return _error(400, str(e))
        except BatcherClosed as e:
            return _error(503, f"{e}; the server is shutting down")
        try:
            answers = await answers_unless_gone(request, future)
        except SemidError as e:  # e.g. a predictor limit that check_input cannot see
            return _error(400, str(e))
        # A predictor bug: logged with its traceback and answered as a 500 here, because an
        # exception raised out of the endpoint makes uvicorn drop the client's keep-alive connection.
        except Exception as e:  # noqa: BLE001
            logger.exception("predict failed")
            return _error(500, f"internal error ({type(e).__name__}: {e}); see the server log")
        if answers is None:
            return Response(status_code=GONE)
        if texts:
            answers = await asyncio.to_thread(with_texts, predictor, answers)
        body = {"results": answers}
        if any(len(a["keys"]) < k for a in answers):  # max_k() may check the run folder: not always
            max_k = await asyncio.to_thread(predictor.max_k)
            body["note"] = short_answers_note(answers, k, max_k, predictor.task, '"num_beams"')
        # a Response skips FastAPI's recursive jsonable_encoder: answers are plain JSON types already
        return JSONResponse(body)

    return app


def default_threads(workers: int = 1) -> int:
    """torch threads per model worker on CPU: the usable cores (:func:`usable_cores`) but one,
    which the HTTP event loop keeps, shared among ``workers``; at least 1.

    On a busy core torch's thread pool waits at every op for its slowest thread, so a pool as
    wide as the machine, sharing it with the server (and often its clients), runs many times
    slower than a narrower one (measured: 10x for one-query beam searches on 2 busy cores)."""
    return max(1, (usable_cores() - 1) // workers)


def default_workers(device: str) -> int:
    """Model workers for ``semid serve`` on ``device``: one per GPU process; on CPU one per usable
    core, up to 4 (each holds a copy of the model).

    A beam search's small ops gain little from a wider torch thread pool (measured on 2 cores:
    batches of 32 ran at the same speed on 1 and 2 threads), while a second worker runs a second
    batch beside the first."""
    if device.startswith("cuda"):
        return 1
    return max(1, min(usable_cores(), 4))


class _Server(uvicorn.Server):
    """uvicorn's server, stopped gracefully by SIGINT or SIGTERM. A second one (Ctrl-C pressed
    again) stops it at once, with one line: ``stop_now`` gives up the batches in flight (their
    model processes killed, no thread waited for), the requests still open are answered 503, and
    the app's shutdown still runs. A third ends the process by the signal, should that hang."""

    def __init__(self, config: uvicorn.Config, stop_now: Callable[[], None]) -> None:
        super().__init__(config)
        self._stop_now = stop_now
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup, noting the event loop that a forced stop cancels requests on."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal: uvicorn's graceful stop. The second: stop without waiting. (uvicorn
        alone forces a stop on SIGINT only, still waits for the open requests, skips the app's
        shutdown, and re-raises every signal at the end: the second one as a KeyboardInterrupt
        inside the event loop, whose teardown printed a traceback.)"""
        if not self.should_exit:
            super().handle_exit(sig, frame)  # re-raised once, when serving has stopped
        elif not self.force_exit:
            self.force_exit = True
            notes.note("stopping now, without waiting for the requests in flight", "serve")
            self._stop_now()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._cancel_requests)
        else:  # the forced stop hangs: end as the signal ends a process
            notes.note("stopped without finishing the shutdown", "serve")
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    def _cancel_requests(self) -> None:
        """Cancel the requests still open: each is answered 503 (see ``predict``)."""
        for task in list(self.server_state.tasks):
            task.cancel()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, and the app's (lifespan) shutdown also when the stop is forced,
        unless it ran already (forced while it ran)."""
        await super().shutdown(sockets)
        done = getattr(self.lifespan, "shutdown_event", None)
        if self.force_exit and not (done is not None and done.is_set()):
            await self.lifespan.shutdown()


def serve(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    log_level: str = "warning",
    threads: int | None = None,
    load: Callable[[], Predictor] | None = None,
    workers: int = 1,
    on_ready: Callable[[int], None] | None = None,
    max_inputs: int = MAX_INPUTS,
    sock: socket.socket | None = None,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
) -> None:
    """Serve ``predictor`` over HTTP until SIGINT/SIGTERM (graceful: in-flight requests finish,
    for at most ``shutdown_timeout_s`` seconds, after which open connections are closed: a client
    that stalls mid-request cannot keep the server up).

    ``on_ready(port)`` is called once the socket listens and the model workers are up, so a client
    told the server is ready is never refused (connections queue until the first is accepted).

    ``load``: a picklable callable that loads the same predictor; when given, ``predict`` runs in
    ``workers`` child processes that call it (see :mod:`semid.model_process`), batches going to
    whichever is free, and ``predictor`` only checks inputs and answers /info. Without ``load`` the
    model runs in this process (one worker). ``threads``: torch's intra-op threads per model worker
    (default :func:`default_threads`). ``sock``: a socket from :func:`bind_socket` to serve on
    (closed at the end; ``host`` and ``port`` then only name it in errors), else one bound here."""
    if not is_integer(workers) or workers < 1:
        raise SemidError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    if load is None and workers > 1:
        raise SemidError("several workers (--workers) run as model processes; drop --in-process")
    threads = default_threads(workers) if threads is None else threads
    sock = bind_socket(host, port) if sock is None else sock
    models: list[ProcessPredictor] = []
    server: _Server | None = None
    try:
        listen(sock, host)
        if load is None:
            torch.set_num_threads(threads)
        else:
            models = ProcessPredictor.launch(predictor, load, threads, workers)
        app = create_app(models[0] if models else predictor, max_batch, max_wait_ms, models[1:],
                         max_inputs=max_inputs)  # fmt: skip
        if on_ready is not None:
            on_ready(sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout_s
        )

        def stop_now() -> None:  # a forced stop: nothing in flight is waited for
            app.state.batcher.abandon()
            for model in models:
                model.kill()

        server = _Server(config, stop_now)
        server.run(sockets=[sock])
    finally:
        forced = server is not None and server.force_exit  # the batches in flight given up
        for model in models:
            model.close(timeout=0.0 if forced else 30.0)
        sock.close()
        if forced and not models and app.state.batcher.running:  # a thread here still computes
            raise StoppedMidBatch
