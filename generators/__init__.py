"""Models, importable as ``semid.generators``: generators of semantic IDs and the baselines they are
compared with. Importing the package registers every one of them in :mod:`semid.models`."""

from semid.generator import Generator
from semid.generators import (  # noqa: F401  (registers them)
    avg,
    mmgrec,
    popular,
    promptdsi,
    sasrec,
    tiger,
)
from semid.models import available_models, build_model, register_model

__all__ = ["Generator", "available_models", "build_model", "register_model"]
