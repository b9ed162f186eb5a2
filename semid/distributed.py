"""Which process of a multi-process job this is (``accelerate launch``, torchrun), without starting
any process group: only the main process prints, evaluates and writes artifacts."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """True for a single process and for rank 0 of a launched job (``RANK`` as torchrun sets it)."""
    return int(os.environ.get("RANK", "0")) == 0
