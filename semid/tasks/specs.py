"""What each task's run is trained from (its spec, saved in the run's ``config.json``) and the
tasks' training defaults.

This module imports nothing heavy: the CLI reads its defaults for ``--help``, and a spec checks
its fields when it is made (the model and quantizer registries are imported only then)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from semid.defaults import AUTO, DEFAULT_NUM_BEAMS
from semid.errors import SemidError
from semid.training.config import TrainConfig

# users validated during training (evenly spaced, the same each epoch): bounds each epoch's check
# and the mixing weight's choice on a large log (a standard error of about 0.004 on Recall@10)
EVAL_USERS = 10_000
IMAGE_NUM_BEAMS = 100  # class-level relevance rewards wide beams; clamped to >= k as everywhere
# Chosen on digits validation (benchmarks/text2image.py --validate): with 700 steps (175 epochs
# of 800 pairs) AVG memorises the deeper vokens of its training images and images indexed later
# fall behind (P@10 0.90; 0.97 at 200 steps, 1.00 at 100; the dual encoder 0.99-1.00 at each).
GENERATOR_MIN_STEPS = 100


def default_train() -> TrainConfig:
    """The CLI's training defaults for recommenders (early-stopped on valid NDCG@10; the epoch cap is
    high enough that early stopping, not the cap, ends training on MovieLens)."""
    return TrainConfig(
        max_epochs=100, batch_size=64, lr=1e-3, early_stopping_patience=5,
        checkpoint_every=1000, keep_checkpoints=1,
    )  # fmt: skip


def document_train(epochs: int = 10, lr: float = 2e-3, patience: int | None = 2) -> TrainConfig:
    """PromptDSI's training defaults. With a document head, held-out training queries pick the best
    epoch (NDCG@10) and stop early; without one there is no validation: a fixed number of epochs.
    Checkpoints make it resumable."""
    return TrainConfig(max_epochs=epochs, lr=lr, batch_size=32, warmup_steps=20,
                       early_stopping_patience=patience, checkpoint_every=200)  # fmt: skip


def document_add_train() -> TrainConfig:
    """The prompt training of each `index add` of documents: a fixed number of epochs."""
    return document_train(5, 1e-2, None)


def image_train() -> TrainConfig:
    """AVG's training defaults (more steps on small collections: ``Text2ImageSpec.min_steps``)."""
    return TrainConfig(max_epochs=4, lr=2e-3, batch_size=256, early_stopping_patience=None)


# the built-in models of the other tasks, with what they are and the command that trains them
OTHER_TASK_MODELS = {
    "avg": "a text-to-image model: train it with `semid train retriever --model avg`",
    "promptdsi": "a document retriever: train it with `semid train retriever --model promptdsi`",
}


def recommender_models() -> list[str]:
    """The models a recommendation run trains: every registered model but the other tasks'."""
    from semid.models import available_models

    return [name for name in available_models() if name not in OTHER_TASK_MODELS]


def checked_model_config(model: str, fields: Any) -> Any:
    """Model ``model``'s config dataclass from ``--model-config`` fields (checked by name and type)."""
    from semid.models import model_config  # imports the model's module, and so torch

    return model_config(model, fields or {}, "--model-config")


def check_model_config_fields(model: str, fields: dict[str, Any] | None) -> None:
    """SemidError for a ``--model-config`` field that training sets itself (the index's codebook
    sizes, its item count): the user's value would be replaced without a word."""
    from semid.models import model_class

    sized = getattr(model_class(model), "SIZED_FIELDS", {})
    given = [name for name in fields or {} if name in sized]
    if given:
        raise SemidError(f"--model-config field {given[0]} of {model} is set from "
                         f"{sized[given[0]]}; leave it out")  # fmt: skip


def check_at_least(spec: Any, names: tuple[str, ...], minimum: int) -> None:
    """SemidError naming the flag of the first field in ``names`` below ``minimum`` (None is unset)."""
    for name in names:
        value = getattr(spec, name)
        if value is not None and value < minimum:
            raise SemidError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


@dataclass
class RecommendSpec:
    """Everything a recommendation run is trained from; saved in its config.json."""

    dataset: str  # a registered dataset or a data path (absolute)
    items: str | None = None  # item texts beside an interactions file
    columns: dict[str, str] | None = None  # column names by role, when not the usual ones
    missing_text: str = "error"
    min_interactions: int = 3
    model: str = "mmgrec"
    model_config: Any = None  # the model's config dataclass (a dict in config.json)
    train: TrainConfig = field(default_factory=default_train)
    max_history: int = 50
    num_beams: int = DEFAULT_NUM_BEAMS
    eval_users: int | None = EVAL_USERS  # validate during training on this many; None: all
    users: int | None = None  # keep only the first N users (a small slice, for smoke tests)
    extra_codes: int = 8  # spare last-level tokens so added items still fit the vocabulary

    def __post_init__(self) -> None:
        if self.model in OTHER_TASK_MODELS:
            raise SemidError(f"--model {self.model} is {OTHER_TASK_MODELS[self.model]}; a "
                             f"recommender is one of {', '.join(recommender_models())}")  # fmt: skip
        self.model_config = checked_model_config(self.model, self.model_config)
        if self.missing_text not in ("error", "drop"):
            raise SemidError(f"--missing-text must be error or drop, got {self.missing_text!r}")
        names = ("min_interactions", "max_history", "num_beams", "eval_users", "users")
        check_at_least(self, names, 1)
        check_at_least(self, ("extra_codes",), 0)


@dataclass
class RetrieveSpec:
    """Everything a document-retrieval run is trained from; saved in its config.json."""

    dataset: str  # debian-docs, or a documents file
    model: str = "promptdsi"
    model_config: Any = None  # PromptDSIConfig (codebook sizes come from the index)
    train: TrainConfig = field(default_factory=document_train)
    add_train: TrainConfig = field(default_factory=document_add_train)
    quantizer: str = AUTO  # rqkmeans sized to the number of documents (semid.indexing.auto_spec)
    extra_codes: int = 64  # spare disambiguation tokens for documents added later
    max_docs: int | None = None
    hold_out: float = 0.1  # share of documents held out as the later corpus (later.jsonl)
    test_fraction: float = 0.2
    seed: int = 0
    num_beams: int = DEFAULT_NUM_BEAMS
    # sentences per document that train as its queries when no document has any (0: refuse such a corpus)
    pseudo_queries: int = 3

    def __post_init__(self) -> None:
        if self.model != "promptdsi":
            raise SemidError(f"document retrieval trains promptdsi, not {self.model!r}")
        self.model_config = checked_model_config(self.model, self.model_config)
        check_at_least(self, ("max_docs",), 2)
        check_at_least(self, ("num_beams",), 1)
        check_at_least(self, ("extra_codes", "pseudo_queries"), 0)
        if not 0 <= self.hold_out < 1:
            raise SemidError(f"--hold-out must be in [0, 1), got {self.hold_out}")
        if self.quantizer != AUTO:
            from semid.quantization import build_quantizer

            build_quantizer(self.quantizer)  # a bad --quantizer fails before documents are encoded


@dataclass
class Text2ImageSpec:
    """Everything a text-to-image run is trained from; saved in its config.json."""

    dataset: str
    model: str = "avg"
    model_config: Any = None  # the generator's config dataclass
    train: TrainConfig = field(default_factory=image_train)
    quantizer: str = AUTO  # used when no --index is given; auto: voken sized to the training images
    num_beams: int = IMAGE_NUM_BEAMS
    extra_codes: int = 8  # spare last-level tokens so images added later still fit the vocabulary
    min_steps: int = GENERATOR_MIN_STEPS  # more epochs than train.max_epochs on small collections
    text_encoder: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.model_config = checked_model_config(self.model, self.model_config)
        check_at_least(self, ("num_beams",), 1)
        check_at_least(self, ("extra_codes",), 0)
        if self.min_steps < 0:
            raise SemidError(f"min_steps must be >= 0, got {self.min_steps}")
