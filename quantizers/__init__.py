"""Quantizer families, importable as ``semid.quantizers``. Importing registers them."""

from semid.quantization import Quantizer, QuantizerSpec, available_quantizers, build_quantizer

__all__ = ["Quantizer", "QuantizerSpec", "available_quantizers", "build_quantizer"]
