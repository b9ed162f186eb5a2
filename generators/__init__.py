"""Generative retrieval models, importable as ``semid.generators``. Importing registers them."""

from semid.generator import Generator, available_generators, build_generator, register_generator
from semid.generators import (  # noqa: F401  (registers them)
    avg,  # noqa: F401  (registers avg)
    mmgrec,
    tiger,
)

__all__ = ["Generator", "available_generators", "build_generator", "register_generator"]
