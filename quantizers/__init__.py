"""Quantizer families, importable as ``semid.quantizers``. Importing registers them."""

from semid.quantization import Quantizer, QuantizerSpec, available_quantizers, build_quantizer
from semid.quantizers import (
    graph_rqvae,  # noqa: F401  (registers graph_rqvae)
    hrq,  # noqa: F401  (registers hrq)
    rqkmeans,  # noqa: F401  (registers rqkmeans)
    rqvae,  # noqa: F401  (registers rqvae)
    voken,  # noqa: F401  (registers voken)
)

__all__ = ["Quantizer", "QuantizerSpec", "available_quantizers", "build_quantizer"]
