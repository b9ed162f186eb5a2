"""Models, importable as ``semid.generators``: generators of semantic IDs and the baselines they are
compared with. Each module registers its model in :mod:`semid.models`; the built-in ones are
imported the first time their name is used (``build_model("mmgrec", ...)``, ``load_model``), so
importing this package loads none of them."""

from semid.generator import Generator
from semid.models import available_models, build_model, register_model

__all__ = ["Generator", "available_models", "build_model", "register_model"]
