"""Quantizer families, importable as ``semid.quantizers``. Importing registers them."""

from semid.quantization import Quantizer, QuantizerSpec, available_quantizers, build_quantizer
from semid.quantizers.graph_rqvae import GraphRQVAE
from semid.quantizers.hrq import HyperbolicRQ
from semid.quantizers.rqkmeans import ResidualKMeans
from semid.quantizers.rqvae import RQVAE
from semid.quantizers.voken import VokenQuantizer

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
]
