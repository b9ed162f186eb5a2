"""`semid serve`: answer top-k requests for a trained run over HTTP (JSON), batching concurrent ones."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import sys
from functools import partial
from pathlib import Path

from semid import notes
from semid.defaults import MAX_INPUTS, SHUTDOWN_TIMEOUT_S, usable_cores
from semid.errors import SemidError, StoppedMidBatch
from semid.manifest import read_manifest

EXAMPLE = (
    "semid serve runs/ml-100k/tiger --port 8000 --device cuda\n"
    '  curl -s localhost:8000/predict -d \'{"users": ["1", "2"], "k": 10}\''
)


def device_name(value: str) -> str:
    """argparse type of --device: cpu, cuda, cuda:N or auto."""
    if re.fullmatch(r"cpu|cuda|cuda:\d+|auto", value) is None:
        raise argparse.ArgumentTypeError(f"{value!r}: use cpu, cuda, cuda:N or auto")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid serve`."""
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory from `semid train ...`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="cpu, cuda, cuda:N or auto (cuda when available; default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="most inputs in one model call (default: %(default)s)",
    )
    p.add_argument(
        "--max-inputs",
        type=int,
        default=MAX_INPUTS,
        help="most inputs in one request; a request with more is refused, so that one client "
        "cannot hold a model worker for long (default: %(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first queued request waits for others to join its batch "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per model worker (default: the usable cores minus one, shared among the "
        "workers, at least 1, so that the HTTP server keeps a core)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="model processes, each with its own copy of the model; a batch goes to whichever is "
        "free (default: 1 on a GPU; on CPU one per usable core, up to 4, since a second batch beside the "
        "first uses the cores better than one batch on a wider thread pool)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the model in the server's process; by default it runs in a child process, so "
        "that HTTP work and the model use different cores instead of taking turns at Python's lock",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=SHUTDOWN_TIMEOUT_S,
        help="seconds that SIGINT/SIGTERM wait for open requests before closing them, so that a "
        "stalled client cannot keep the server up (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="warning",
        help="uvicorn log level; info logs every request (default: %(default)s)",
    )


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def run(args: argparse.Namespace) -> int:
    """Load the run's predictor and serve it until Ctrl-C / SIGTERM."""
    if not 0 <= args.port <= 65535:
        raise SemidError(f"--port must be in [0, 65535] (0: a free one), got {args.port}")
    if args.max_batch < 1:
        raise SemidError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_inputs < 1:
        raise SemidError(f"--max-inputs must be >= 1, got {args.max_inputs}")
    if not (math.isfinite(args.max_wait_ms) and args.max_wait_ms >= 0):
        raise SemidError(f"--max-wait-ms must be a finite number >= 0, got {args.max_wait_ms}")
    if not (math.isfinite(args.shutdown_timeout) and args.shutdown_timeout >= 0):
        raise SemidError(
            f"--shutdown-timeout must be a finite number of seconds >= 0, got {args.shutdown_timeout}"
        )
    if args.threads is not None and args.threads < 1:
        raise SemidError(f"--threads must be >= 1, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        raise SemidError(f"--workers must be >= 1, got {args.workers}")
    cores = usable_cores()
    for flag in ("workers", "threads"):  # each worker holds a model copy: more than cores only wait
        if (getattr(args, flag) or 0) > cores:
            notes.note(f"--{flag} {getattr(args, flag)} is more than this machine's {cores} "
                       f"usable cores; using {cores}")  # fmt: skip
            setattr(args, flag, cores)
    if args.in_process and (args.workers or 1) > 1:
        raise SemidError("--workers > 1 runs model processes; drop --in-process")
    read_manifest(args.run_dir)  # a wrong RUN is told before the task layer (torch) loads
    from semid.sockets import bind_socket

    sock = bind_socket(args.host, args.port)  # a taken port is told before the run loads
    try:
        _load_and_serve(args, sock)
    except StoppedMidBatch:  # a batch left computing in a thread: exit without finalizing
        print("semid serve: stopped", flush=True)
        sys.stderr.flush()
        os._exit(0)
    finally:
        sock.close()
    print("semid serve: stopped", flush=True)
    return 0


def _load_and_serve(args: argparse.Namespace, sock: socket.socket) -> None:
    """Load the run's predictor (in this process and the model workers) and serve it on ``sock``
    until Ctrl-C or SIGTERM."""
    from semid.reloading import follow_run
    from semid.serving import default_workers, serve
    from semid.tasks import load_predictor, resolve_device

    device = resolve_device(args.device)
    # each copy of the run follows its folder: `semid index add` while serving is answered at once
    load = partial(follow_run, load_predictor, args.run_dir, device=device, announce=False)
    workers = 1 if args.in_process else args.workers or default_workers(device)
    # the server's own copy only checks inputs and answers /info; the model process predicts
    predictor = follow_run(
        load_predictor, args.run_dir, device="cpu" if not args.in_process else device
    )
    predictor.read_data()  # a large interactions log: read before serving, not at the first request
    if (unsearched := predictor.unsearched_note()) is not None:
        notes.note(unsearched, "serve")

    def announce(port: int) -> None:
        print(
            f"serving {args.run_dir} ({predictor.task}, {workers} model worker(s) on {device}) on "
            f"http://{url_host(args.host)}:{port} (POST /predict, GET /health, GET /info; Ctrl-C to stop)",
            flush=True,
        )

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: make SIGTERM end
    # like Ctrl-C here (KeyboardInterrupt, exit 0) instead of killing the process by the signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(
            predictor,
            host=args.host,
            port=args.port,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_inputs=args.max_inputs,
            log_level=args.log_level,
            threads=args.threads,
            load=None if args.in_process else load,
            workers=workers,
            on_ready=announce,
            sock=sock,
            shutdown_timeout_s=args.shutdown_timeout,
        )
    except StoppedMidBatch:
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while serving: a normal stop
        pass
