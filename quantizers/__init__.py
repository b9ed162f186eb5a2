"""Quantizer families, importable as ``semid.quantizers``. A family's module is imported (and
its class registered) when first used, by its spec's name or by its class name here: a run that
uses rqkmeans does not import hrq's geoopt."""

from __future__ import annotations

import importlib
from typing import Any

from semid.quantization import Quantizer, QuantizerSpec, available_quantizers, build_quantizer

FAMILY_MODULES = {  # family name -> module; each module registers its family when imported
    "graph_rqvae": "semid.quantizers.graph_rqvae",
    "hrq": "semid.quantizers.hrq",
    "rqkmeans": "semid.quantizers.rqkmeans",
    "rqvae": "semid.quantizers.rqvae",
    "voken": "semid.quantizers.voken",
}
_CLASSES = {  # class name -> family
    "GraphRQVAE": "graph_rqvae",
    "HyperbolicRQ": "hrq",
    "ResidualKMeans": "rqkmeans",
    "RQVAE": "rqvae",
    "VokenQuantizer": "voken",
}


def __getattr__(name: str) -> Any:
    """A family class (``semid.quantizers.ResidualKMeans``), its module imported on first use."""
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(FAMILY_MODULES[_CLASSES[name]]), name)


def load_families(*families: str) -> None:
    """Import the modules of the built-in ``families`` (all of them when none is named)."""
    for family in families or FAMILY_MODULES:
        if family in FAMILY_MODULES:
            importlib.import_module(FAMILY_MODULES[family])


__all__ = [
    "GraphRQVAE",
    "HyperbolicRQ",
    "Quantizer",
    "QuantizerSpec",
    "RQVAE",
    "ResidualKMeans",
    "VokenQuantizer",
    "available_quantizers",
    "build_quantizer",
    "load_families",
]
