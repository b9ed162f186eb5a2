"""One registry for every model a task can train: generators and baselines alike.

A model is an ``nn.Module`` with a dataclass ``config`` and a ``config_class``. It is either a
*generator* (a :class:`semid.generator.Generator`: writes semantic IDs, searched with the trie) or a
*scorer* (``score_rows(batch) -> (B, N)``: scores every index row, e.g. most-popular or SASRec).
The engine ranks both through :mod:`semid.ranking`, so no task special-cases a model by name.

Fields a model takes from the index (``codebook_sizes``, ``num_items``, ``max_len``) are filled by
the class's ``sized_for(config, ids, **context)``; everything else comes from the user's config.
Concrete models live in ``semid.generators``; each built-in one is imported the first time its
name is used, so a command loads only the model it runs (TIGER's module alone pulls in
``transformers``, about 4 s of start-up on 2 CPU cores). This module itself imports no torch, so
the CLI can list the models in ``--help`` at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from semid.configs import config_from_dict
from semid.errors import SemidError
from semid.wording import did_you_mean

if TYPE_CHECKING:
    from torch import nn

M = TypeVar("M", bound=type)
_REGISTRY: dict[str, type] = {}
MODEL_KIND = "model"
# built-in models: name -> the module whose import registers it
BUILTIN_MODELS = {
    "avg": "semid.generators.avg",
    "mmgrec": "semid.generators.mmgrec",
    "pop": "semid.generators.popular",
    "promptdsi": "semid.generators.promptdsi",
    "sasrec": "semid.generators.sasrec",
    "tiger": "semid.generators.tiger",
}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make ``build_model(name, config)`` and ``load_model`` construct this class."""

    def wrap(cls: M) -> M:
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__}.config_class must be a dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_models() -> list[str]:
    """Names of the built-in and registered models (nothing is imported)."""
    return sorted(set(_REGISTRY) | set(BUILTIN_MODELS))


def model_class(name: str) -> type:
    """The registered class of model ``name``, or a SemidError listing the known ones."""
    if name not in _REGISTRY and name in BUILTIN_MODELS:
        importlib.import_module(BUILTIN_MODELS[name])  # registers it
    if name not in _REGISTRY:
        known = available_models()
        raise SemidError(
            f"unknown model {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    return _REGISTRY[name]


def model_config(name: str, fields: dict[str, Any] | Any, where: str = "model config") -> Any:
    """The config dataclass of model ``name`` from a dict of its fields (checked) or as given."""
    cls = model_class(name).config_class
    if isinstance(fields, cls):
        return fields
    return config_from_dict(cls, dict(fields), where)


def build_model(name: str, config: dict[str, Any] | Any) -> nn.Module:
    """A new model of family ``name`` from its config dataclass or a dict of its fields."""
    return model_class(name)(model_config(name, config, f"{name} config"))


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write a registered model's folder (config.json + model.safetensors), atomically."""
    from semid.saving import write_module

    write_module(path, MODEL_KIND, model.name, dataclasses.asdict(model.config), model)


def load_model(path: str | os.PathLike) -> nn.Module:
    """Any registered model from a folder written by :func:`save_model`, in eval mode."""
    from semid.saving import load_state, read_module

    name, config = read_module(path, MODEL_KIND, "train the model again")
    cls = model_class(name)
    # fields added after a model was saved take the value that keeps its old behaviour
    config = {**getattr(cls, "saved_defaults", {}), **config}
    model = cls(config_from_dict(cls.config_class, config, f"{path}/config.json"))
    load_state(model, path)
    return model.eval()


def is_generator(model: Any) -> bool:
    """True for models that write semantic IDs (searched with the trie), False for scorers."""
    return hasattr(model, "step_model")
