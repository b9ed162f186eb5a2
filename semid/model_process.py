"""A predictor whose ``predict`` runs in a child process, so the model never holds the server's GIL.

In one process, the beam search's Python code (op dispatch between kernels) holds the interpreter
lock, and the HTTP event loop waits for it: request parsing and answer encoding serialize with the
model. :class:`ProcessPredictor` keeps the cheap, read-only calls (``check_input``, ``info``,
``max_k``) on a local copy and sends each ``predict`` over a pipe to a child process that loaded its
own copy, so HTTP work and model work run on different cores at once. The local copy also
resolves each batch (a recommender's user becomes their events), so the child never reads the
run's data files: one read of a large log, and one copy of it in memory, serve every replica.

:meth:`ProcessPredictor.launch` starts several (replicas, each on its own cores) that load side by
side. The child is started with ``spawn`` (a fresh interpreter, no forked torch thread pools) and builds
its predictor with ``load()``, a picklable callable such as ``functools.partial(load_predictor,
run, device="cuda")``. Calls are made from one thread at a time (the batching worker).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

from semid.errors import SemidError
from semid.notes import note, show_on_console

_CONTEXT = multiprocessing.get_context("spawn")


class ModelProcessError(RuntimeError):
    """The model process died or could not load the predictor."""


def _serve_predictions(load: Callable[[], Any], threads: int, conn: Connection) -> None:
    """Child process: load, report readiness (or the load error), then answer predict calls."""
    # Ctrl-C reaches the whole process group: the parent stops this process after in-flight
    # requests are answered, so the interrupt must not kill it first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    show_on_console()  # a fresh interpreter: its notes (a reloaded run) are shown as the parent's
    torch.set_num_threads(threads)
    try:
        predictor = load()
    except Exception as e:  # noqa: BLE001  -- reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", predictor.info()))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent closed its end: stop
            return
        if message is None:
            return
        inputs, k, num_beams, stamp = message
        try:
            if stamp is not None:  # the run as the server's copy loaded it, when it can be had
                predictor.catch_up(stamp)
            conn.send(("ok", predictor.predict_resolved(inputs, k, num_beams)))
        except SemidError as e:  # a bad request: the parent re-raises it as a SemidError
            conn.send(("semid_error", str(e)))
        # A predictor bug: its traceback goes to this process's stderr (the server log), and the
        # request fails as it would in process, so the model process stays up for other requests.
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ProcessPredictor:
    """``local``'s checks and info, with ``predict`` answered by ``load()``'s predictor in a child
    process running ``threads`` torch threads. Raises ModelProcessError if the child cannot load."""

    def __init__(self, local: Any, load: Callable[[], Any], threads: int) -> None:
        self.local = local
        self.task = local.task
        self._load, self._threads = load, threads
        self._lock = threading.Lock()  # one predict call at a time on the pipe
        # one thread receives the child's "ready" (predict, a restart and /info may wait at once)
        self._ready_lock = threading.Lock()
        self._closed = False  # closed by the server: a child that dies then is not replaced
        self._start()

    def _start(self) -> None:
        """Start the child process; it reports once loaded (``wait_until_loaded``)."""
        self._conn, child_conn = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=_serve_predictions, args=(self._load, self._threads, child_conn),
            name="semid-model", daemon=True,
        )  # fmt: skip
        self._process.start()
        child_conn.close()
        self._info: dict[str, Any] | None = None

    def _restart(self) -> None:
        """Replace a child that died (the out-of-memory killer, a crash) with a new one, loaded;
        ModelProcessError once closed (the server stopping without waiting killed it)."""
        if self._closed:
            raise ModelProcessError("the model process was stopped: the server is stopping")
        code = self._process.exitcode
        self._conn.close()
        note(f"a model process stopped (exit code {code}); starting a new one", "serve")
        self._start()
        self.wait_until_loaded()

    @classmethod
    def launch(
        cls, local: Any, load: Callable[[], Any], threads: int, count: int = 1
    ) -> list[ProcessPredictor]:
        """``count`` model processes, loading side by side; returns once all have loaded.
        Raises ModelProcessError (after stopping them all) if one cannot load."""
        started = [cls(local, load, threads) for _ in range(count)]
        try:
            for predictor in started:
                predictor.wait_until_loaded()
        except BaseException:
            for predictor in started:
                predictor.close()
            raise
        return started

    def wait_until_loaded(self) -> None:
        """Block until the child has loaded its predictor; ModelProcessError if it could not.
        Thread-safe: threads that wait together receive the child's one report once."""
        if self._info is not None:
            return
        with self._ready_lock:
            if self._info is not None:  # received by another thread meanwhile
                return
            status, detail = self._receive()
            if status != "ready":
                raise ModelProcessError(f"the model process could not load the run: {detail}")
            self._info = {**detail, "model_process": True}

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)  # its end of the pipe closed: it is exiting
            code = self._process.exitcode
            raise ModelProcessError(f"the model process stopped (exit code {code})") from None

    def info(self) -> dict[str, Any]:
        """The local copy's info (current, should the run be loaded again) with the model process's
        device."""
        self.wait_until_loaded()
        reported = self._info or {}  # None again if a restart began meanwhile: no device then
        device = {k: v for k, v in reported.items() if k == "device"}
        return {**self.local.info(), **device, "model_process": True}

    def max_k(self) -> int:
        """The local predictor's catalogue size."""
        return self.local.max_k()

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """Validated by the local predictor (no round trip to the model process)."""
        return self.local.check_input(item)

    def item_texts(self, keys: Sequence[str]) -> list[str] | None:
        """The local predictor's texts of these keys (no round trip to the model process)."""
        return self.local.item_texts(keys)

    def predict(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """The child's answers for ``inputs``; SemidError for a bad request, as in-process. The
        local copy resolves them first (a user's events from the data), so that only this process
        reads the run's data files."""
        self.wait_until_loaded()
        resolved = self.local.resolve(inputs)
        stamp = getattr(self.local, "stamp", None)  # a run that follows its folder: the state read
        with self._lock:
            if not self._process.is_alive():  # died since its last batch: a new one answers
                self._restart()
            try:
                status, payload = self._exchange((resolved, k, num_beams, stamp))
            except ModelProcessError:
                if self._process.is_alive():
                    raise
                self._restart()  # died on this batch: one more try, on a new process
                status, payload = self._exchange((resolved, k, num_beams, stamp))
        if status == "semid_error":
            raise SemidError(payload)
        if status == "error":
            raise RuntimeError(f"the model process failed: {payload}")
        return [{**answer, "input": item} for answer, item in zip(payload, inputs, strict=True)]

    def _exchange(self, message: tuple[Any, ...]) -> tuple[str, Any]:
        """Send one predict call to the child and receive its reply (ModelProcessError if it died)."""
        try:
            self._conn.send(message)
        except OSError:  # the child is gone: _receive says so
            pass
        return self._receive()

    def kill(self) -> None:
        """Stop the child at once (a forced stop of the server): a batch in flight is given up,
        and the child is not replaced."""
        self._closed = True
        if self._process.is_alive():
            self._process.kill()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the child process (idempotent): asked to end, and killed if it has not ended
        after ``timeout`` seconds (a batch in flight is given up). The pipe is then closed once
        no call reads it (up to 5 s more; a call still holding it keeps it open, to the exit)."""
        self._closed = True
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        # a thread still reading the dead child's reply gets end-of-file at once and lets go of
        # the pipe; closed under it, its read could reach a file given the freed descriptor
        if self._lock.acquire(timeout=5):
            try:
                self._conn.close()
            finally:
                self._lock.release()
