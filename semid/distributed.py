"""Which process of a multi-process job this is (``accelerate launch``, torchrun), and the steps
only the main process takes: it prints, evaluates and writes artifacts, and the other processes
wait for its checks so that the job goes on or stops together."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from semid.errors import SemidError

T = TypeVar("T")


def is_main_process() -> bool:
    """True for a single process and for rank 0 of a launched job (``RANK`` as torchrun sets it)."""
    return int(os.environ.get("RANK", "0")) == 0


def is_launched() -> bool:
    """True in a job of several processes (``WORLD_SIZE`` > 1, as torchrun sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)


def stop_with_launcher() -> None:
    """Have this process of a launched job sent SIGTERM when its launcher dies (Linux's
    ``PR_SET_PDEATHSIG``), so that it stops as one the launcher ends does. torchrun starts each
    process in its own session: a launcher killed with SIGKILL (or its job's process group) left
    them training, holding the run's lock, and writing the run after the job had ended. Elsewhere
    nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # no C library to ask
        return
    # should prctl be refused (a seccomp filter, say), a later death goes unnoticed; one before
    # the call is caught below either way
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != launcher:  # it died before the call: the signal is not coming
        os.kill(os.getpid(), signal.SIGTERM)


def on_main_process(work: Callable[[], T], device: str = "auto") -> T | None:
    """Run ``work`` on the main process only and return its result there (None on the others).
    In a launched job the other processes wait for it, and a SemidError it raises is raised by
    every process: the job stops at once, instead of leaving the others waiting for the main
    process in a collective until the launcher kills them. ``device``: where the job trains, as
    its trainer will be told (the process group is joined here, once: see `trains_on_cpu`)."""
    result, error = None, None
    if is_main_process():
        try:
            result = work()
        except SemidError as e:
            if not is_launched():  # one process: the error as raised
                raise
            error = str(e)
    if is_launched():
        from accelerate.utils import broadcast_object_list

        join_process_group(device)
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise MainProcessError(error)
    return result


def main_process_value(value: T, device: str = "auto") -> T:
    """``value`` as the main process computed it, on every process of a launched job (each
    computed its own, and machines whose floating-point paths differ, other CPUs or GPUs, can
    compute other ones); ``value`` itself in a single process. ``device``: as `on_main_process`'s."""
    if not is_launched():
        return value
    from accelerate.utils import broadcast_object_list

    join_process_group(device)
    return broadcast_object_list([value])[0]


class MainProcessError(SemidError):
    """A refusal of the main process that every process of a launched job raises (`on_main_process`):
    the main process tells it, the others stop quietly."""


# how long a process waits in a collective for the others: the main process may build an index
# meanwhile (text-to-image: an autoencoder and a quantizer fitted on the CPU), longer than the
# backends' defaults (30 min for gloo, 10 for NCCL); a process that dies is seen by the launcher
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def trains_on_cpu(device: str) -> bool:
    """Whether a training told ``device`` runs on the CPU: ``cpu``, or ``ACCELERATE_USE_CPU`` set
    (`accelerate launch --cpu`); the one rule for the process group, the trainer and its precision."""
    from accelerate.utils import parse_flag_from_env

    return device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU")


def leave_process_group() -> None:
    """Leave the launched job's process group, if this process joined one: a process that exits
    on an error while still in it could abort in the backend's threads ("terminate called without
    an active exception"), which the launcher then reports as the job's root cause."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join_process_group(device: str) -> None:
    """Join the launched job's process group (once), as the trainer's Accelerator would: on the
    CPU when it trains there (`trains_on_cpu`), else on each process's own GPU."""
    from accelerate import PartialState

    PartialState(cpu=trains_on_cpu(device), timeout=COLLECTIVE_TIMEOUT)
