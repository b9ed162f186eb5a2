"""Checks of the device a command or a library call is asked to run on."""

from __future__ import annotations

import torch

from semid.errors import SemidError


def check_cuda_device(device: str, named: str, cpu: str) -> None:
    """SemidError when ``device`` ('cuda' or 'cuda:N') names a GPU this machine does not have.
    ``named`` is how the message names the request (``--device cuda``), ``cpu`` the setting that
    runs on the CPU instead (``--device cpu``)."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise SemidError(f"{named}: no CUDA GPU is available here; use {cpu}")
    index, count = int(device[5:] or 0), torch.cuda.device_count()
    if index >= count:
        raise SemidError(f"{named}: only {count} GPU(s); use cuda:0..cuda:{count - 1}")
