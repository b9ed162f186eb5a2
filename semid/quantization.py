"""The quantizer protocol: spec strings, the base class, the family registry, save and load.

A quantizer maps vectors (N, D) to semantic IDs (N, L) and back. Concrete families live in
`semid.quantizers` and register themselves here by name, so the engine never imports a model.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from semid.errors import SemidError
from semid.saving import load_state, read_module, write_module
from semid.trie import check_codes
from semid.wording import did_you_mean

MAX_MAGNITUDE = 1e15  # larger embedding values overflow float32's squared distances
MAX_LEVELS = 16  # IDs are decoded one level at a time: a longer ID is a slower, weaker target
MAX_CODES_PER_LEVEL = 2**20  # far more than any catalogue needs at 2+ levels; bounds the codebooks
RECONSTRUCTION_BATCH = 65_536  # rows decoded at a time by Quantizer.reconstruction_error
_SPEC_RE = re.compile(
    r"^(?P<family>[a-z][a-z0-9_]*):(?P<levels>\d+)x(?P<size>\d+)(?P<opts>(,[^,=]+=[^,=]+)*)$"
)


@dataclass(frozen=True)
class QuantizerSpec:
    """A compact, round-tripping description such as ``rqkmeans:3x256`` or ``hrq:3x256,c=1.0``."""

    family: str
    levels: int
    codebook_size: int
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> QuantizerSpec:
        """Parse ``family:LxK[,key=value...]``; raise SemidError naming the expected form."""
        m = _SPEC_RE.match(text.strip())
        if m is None and text.strip().lower() == "auto":
            raise SemidError("the quantizer spec 'auto' is sized to a collection: build_ids and "
                             "`semid index build` take it; here, give a spec such as "
                             "semid.indexing.auto_spec(number_of_items)")  # fmt: skip
        if m is None:
            raise SemidError(
                f"bad quantizer spec {text!r}; expected FAMILY:LEVELSxCODES[,key=value], e.g. rqkmeans:3x256"
            )
        levels, size = int(m["levels"]), int(m["size"])
        if levels < 1 or size < 2:
            raise SemidError(
                f"bad quantizer spec {text!r}: need at least 1 level and 2 codes per level"
            )
        if levels > MAX_LEVELS or size > MAX_CODES_PER_LEVEL:
            raise SemidError(f"bad quantizer spec {text!r}: use at most {MAX_LEVELS} levels (IDs "
                             f"are decoded one level at a time) and {MAX_CODES_PER_LEVEL:,} codes "
                             "per level")  # fmt: skip
        pairs = [kv.split("=", 1) for kv in m["opts"].split(",") if kv]
        opts = dict(pairs)
        if len(opts) < len(pairs):
            names = [k for k, _ in pairs]
            again = next(k for k in names if names.count(k) > 1)
            raise SemidError(
                f"bad quantizer spec {text!r}: option {again} is given twice; keep one"
            )
        return cls(m["family"], levels, size, opts)

    def __str__(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.family}:{self.levels}x{self.codebook_size}{opts}"

    def option(self, key: str, default: Any, cast: type = str) -> Any:
        """Typed access to an option, e.g. ``spec.option("c", 1.0, float)``."""
        if key not in self.options:
            return default
        try:
            value = cast(self.options[key])
        except ValueError:
            raise SemidError(
                f"option {key}={self.options[key]!r} in {self} is not a valid {cast.__name__}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):  # nan, inf: a useless index
            raise SemidError(
                f"option {key}={self.options[key]!r} in {self} must be a finite number"
            )
        return value

    def widths(self, key: str, default: str) -> list[int]:
        """Layer widths joined by '-' in option ``key`` (``hidden=512-256``), else ``default``."""
        text = self.option(key, default)
        try:
            widths = [int(w) for w in text.split("-") if w]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise SemidError(
                f"option {key}={text!r} in {self} must be widths joined by '-', e.g. {key}=512-256"
            )
        return widths

    def check_options(self, accepted: Sequence[str]) -> None:
        """SemidError naming the options that are not in ``accepted`` and listing those that are."""
        unknown = sorted(set(self.options) - set(accepted))
        if unknown:
            raise SemidError(f"unknown option(s) {', '.join(unknown)} in {self}; {self.family} "
                             f"accepts {', '.join(accepted)}")  # fmt: skip


def fits_on_the_cpu(fit: Callable[..., Quantizer]) -> Callable[..., Quantizer]:
    """Decorator for a family's ``fit``: the fit computes on the CPU whatever device its inputs and
    the quantizer are on (so a seed gives the same quantizer on every machine), then the quantizer
    moves to the device of x, ready to encode it. The arguments' tensors are copied to the CPU
    (`_on_cpu`); other arguments pass through."""

    @functools.wraps(fit)
    def wrapper(self: Quantizer, *args: Any, **kwargs: Any) -> Quantizer:
        device = _device_of(args[0] if args else kwargs.get("x"))
        self.cpu()
        try:
            fit(self, *map(_on_cpu, args), **{k: _on_cpu(v) for k, v in kwargs.items()})
        finally:
            self.to(device)
        return self

    return wrapper


def _device_of(x: Any) -> torch.device:
    """The device of a tensor, or of the first tensor in a list or tuple; the CPU otherwise."""
    if isinstance(x, Tensor):
        return x.device
    if isinstance(x, (list, tuple)):
        return next((_device_of(v) for v in x if isinstance(v, Tensor)), torch.device("cpu"))
    return torch.device("cpu")


def _on_cpu(value: Any) -> Any:
    """A tensor on the CPU, and so each tensor of a list, tuple or dataclass (an
    ``InteractionLog``); anything else as it is."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, list):
        return [_on_cpu(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_on_cpu(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.init]
        return dataclasses.replace(
            value, **{name: _on_cpu(getattr(value, name)) for name in fields}
        )
    return value


def as_embeddings(x: Any) -> Tensor:
    """``x`` (a tensor, an array or nested lists of numbers) as a tensor, checked to be real
    numbers; SemidError for what holds no numbers of one shape (an object array, ragged rows)."""
    if isinstance(x, Tensor):
        check_real(x)
        return x
    try:
        tensor = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:  # object arrays, ragged or non-numeric rows
        kind = f"an array of {x.dtype}" if hasattr(x, "dtype") else f"{type(x).__name__} ({e})"
        raise SemidError(f"embeddings must be numbers of one shape (N, D), got {kind}; give a "
                         "float array, e.g. np.asarray(rows, dtype=np.float32)") from None  # fmt: skip
    check_real(tensor)
    return tensor


def check_real(x: Tensor) -> None:
    """SemidError if the embeddings ``x`` are booleans or complex numbers, which ``float()`` would
    read as 0/1 or cut to their real part."""
    if x.dtype == torch.bool or x.is_complex():
        raise SemidError(f"embeddings must be real numbers, got {x.dtype}; give float vectors")


def checked_rows(x: Tensor, dim: int | None, what: str, *, empty_ok: bool = False) -> Tensor:
    """``x`` as float32 (N, dim) finite rows of moderate size (``dim`` None: any width; N = 0
    only with ``empty_ok``); SemidError naming ``what`` otherwise."""
    if x.ndim != 2:
        raise SemidError(f"expected {what} of shape (N, D), got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise SemidError(f"{what} have dimension {x.shape[1]} but the quantizer expects {dim}")
    if x.shape[1] == 0:
        raise SemidError(f"{what} have 0 columns (shape (N, 0)); give vectors of dimension >= 1")
    if x.shape[0] == 0:
        if empty_ok:
            return x.float()
        raise SemidError(f"no {what} given (N = 0)")
    # measured before float32 (finite float64 beyond its range would read as infinity)
    wide = x if x.is_floating_point() and x.element_size() > 4 else x.float()
    low, high = (float(v) for v in torch.aminmax(wide))  # one pass, no copy; NaN and inf show here
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(wide)).any(1).sum())
        raise SemidError(f"{bad} rows of {what} contain NaN or infinity; clean or drop them first")
    x = wide.float()
    largest = max(-low, high)
    if largest > MAX_MAGNITUDE:  # squared distances would overflow float32
        raise SemidError(f"{what} reach values of {largest:.3g}, beyond {MAX_MAGNITUDE:.0e}; "
                         "scale them first (e.g. normalise each vector)")  # fmt: skip
    return x


class Quantizer(nn.Module, ABC):
    """Base class of every quantizer family. State lives in parameters and buffers, so
    ``state_dict`` is the whole fitted model."""

    family: ClassVar[str]

    def __init__(self, spec: QuantizerSpec, dim: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.dim: int | None = None
        self.register_buffer("initted", torch.tensor(False))
        if dim is not None:
            self.build(dim)

    def build(self, dim: int) -> None:
        """Create the parameters and buffers for inputs of dimension `dim` (once)."""
        if self.dim is not None:
            if dim != self.dim:
                raise SemidError(
                    f"embeddings have dimension {dim} but the quantizer expects {self.dim}"
                )
            return
        self.dim = dim
        self.rebuild()

    def rebuild(self) -> None:
        """Allocate the parameters and buffers afresh for the current ``dim`` (a family whose
        layout depends on what fit is given); the initial weights leave the caller's RNG alone."""
        with torch.random.fork_rng(devices=[]):
            self._build(self.dim)

    @abstractmethod
    def _build(self, dim: int) -> None:
        """Family hook: allocate parameters and buffers for input dimension `dim`."""

    @property
    def levels(self) -> int:
        """Number of code levels L."""
        return self.spec.levels

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level."""
        return [self.spec.codebook_size] * self.spec.levels

    @abstractmethod
    def fit(self, x: Tensor, **kwargs: Any) -> Quantizer:
        """Learn codebooks from x (N, D); returns self."""

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, L) int64 for vectors x (N, D)."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructions (N, D) of codes (N, L)."""

    @abstractmethod
    def last_level_distances(self, x: Tensor) -> Tensor:
        """Distances (N, K_last) from each item's last-level residual to every last-level code.

        Used by the ``reassign`` collision strategy to move an item to its nearest free code."""

    @property
    def can_decode(self) -> bool:
        """Whether ``decode`` maps codes back to input space (all families but hrq without its
        decoder, which decodes to points of its ball only)."""
        return True

    @torch.no_grad()
    def reconstruction_error(
        self, x: Tensor, codes: Tensor | None = None, batch: int = RECONSTRUCTION_BATCH
    ) -> float | None:
        """The share of the spread of x (N, D) about its mean that the IDs lose:
        sum ||x - decode(codes)||^2 / sum ||x - mean(x)||^2, 0 for a perfect reconstruction, 1 for
        one no better than the mean item (above 1: worse). ``codes`` (N, L): those of x (encoded
        here when None). None when ``decode`` cannot map back to input space (``can_decode``) or
        the items (nearly) all equal each other (nothing to explain; their spread within float32's
        rounding of their size, as for rows sharing an offset a million times their spread).
        Computed ``batch`` rows at a time, in float32 summed in float64, with no copy of x."""
        self.check_fitted()
        x = self.check_input(x)
        if codes is not None and len(codes) != len(x):
            raise SemidError(
                f"{len(codes)} rows of codes for {len(x)} vectors; give one per vector"
            )
        if batch < 1:
            raise SemidError(f"batch must be >= 1 row, got {batch}")
        if not self.can_decode:
            return None
        chunks = range(0, len(x), batch)
        mean = sum(x[i : i + batch].sum(0, dtype=torch.float64) for i in chunks) / len(x)
        mean32 = mean.float()
        lost = spread = size = 0.0
        for start in chunks:
            rows = x[start : start + batch]
            part = self.encode(rows) if codes is None else codes[start : start + batch]
            recon = self.decode(part).to(rows.device)
            lost += float((rows - recon).pow(2).sum(dtype=torch.float64))
            spread += float((rows - mean32).pow(2).sum(dtype=torch.float64))
            size += float(rows.pow(2).sum(dtype=torch.float64))
        # all rows equal up to float32 rounding: a ratio of rounding errors would mean nothing
        return lost / spread if spread > 1e-12 * size else None

    def extra_config(self) -> dict[str, Any]:
        """Family-specific constructor arguments beyond spec and dim, saved in config.json."""
        return {}

    def extra_repr(self) -> str:
        """The spec, input size and whether it is fitted, first in the module's repr."""
        return f"{self.spec}, dim={self.dim}, fitted={bool(self.initted)}"

    def check_input(self, x: Tensor, *, empty_ok: bool = False) -> Tensor:
        """Validate x as (N, dim) finite floats; returns it as float32 (fit builds the model first).

        N = 0 is refused unless ``empty_ok`` (encoding an empty batch gives empty codes)."""
        return checked_rows(as_embeddings(x), self.dim, "embeddings", empty_ok=empty_ok)

    def check_codes(self, codes: Any, device: torch.device | str | None = None) -> Tensor:
        """Validate codes as integers (N, levels) within the codebook size; returns them as long
        (on ``device`` when given). Float codes are refused, not truncated."""
        return check_codes(torch.as_tensor(codes, device=device), self.codebook_sizes)

    def check_fitted(self) -> None:
        """Raise a clear error if the quantizer has not been fitted or loaded."""
        if not bool(self.initted):
            raise SemidError(f"{self.spec} is not fitted; call fit(x) or load a fitted one")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors into the folder `path`, atomically; SemidError
        if the quantizer is not fitted (the folder could not be loaded)."""
        self.check_fitted()
        config = {"spec": str(self.spec), "dim": self.dim, **self.extra_config()}
        write_module(path, "quantizer", self.spec.family, config, self)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Quantizer:
        """Load a quantizer from a folder written by save_pretrained: of any registered family
        through ``Quantizer``, of this family (or a subclass) through a family's class."""
        from semid.ids import index_fix  # semid.ids imports this module

        index = Path(path).parent  # an index's quantizer is mended with its index
        fix = (
            index_fix(index)
            if (index / "keys.json").is_file()
            else "save it again with save_pretrained"
        )
        _, config = read_module(path, "quantizer", fix)
        config = dict(config)
        try:  # a damaged spec or option is named with the file it is in
            spec = QuantizerSpec.parse(str(config.pop("spec", "")))
            family = quantizer_class(spec.family)
        except SemidError as e:
            raise SemidError(f"{path}/config.json: {e}; {fix}") from None
        dim = config.pop("dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise SemidError(f"{path}/config.json has no valid input dimension; {fix}")
        if not issubclass(family, cls):
            raise SemidError(f"{path} holds a {spec.family} quantizer, not a {cls.family}; load it "
                             "with Quantizer.from_pretrained")  # fmt: skip
        try:
            q = build_quantizer(spec, dim, **config)  # names an option the family does not take
        except SemidError as e:
            raise SemidError(f"{path}/config.json: {e}; {fix}") from None
        load_state(q, path)
        return q


_REGISTRY: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: make a Quantizer subclass buildable by its family name."""

    def wrap(cls: type[Quantizer]) -> type[Quantizer]:
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def quantizer_class(family: str) -> type[Quantizer]:
    """The registered class for `family`; loads the built-in families on first use."""
    from semid.quantizers import load_families

    if family not in _REGISTRY:
        load_families(family)  # only that family's module (hrq's pulls in geoopt and scipy)
    if family not in _REGISTRY:
        load_families()  # every built-in family, to name them
        raise SemidError(
            f"unknown quantizer family {family!r}{did_you_mean(family, _REGISTRY)}; known: "
            f"{', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[family]


def available_quantizers() -> list[str]:
    """Names of every registered quantizer family."""
    from semid.quantizers import load_families

    load_families()
    return sorted(_REGISTRY)


# the bounds of a learned quantizer's training options (`check_train_config`)
_COUNTS = ("epochs", "batch_size", "pair_batch", "negatives", "init_batch", "val_negatives",
           "checkpoint_every", "min_val_items")  # fmt: skip
_NON_NEGATIVE = ("lr", "weight_decay", "hierarchy_weight")
_NON_NEGATIVE_COUNTS = ("min_steps", "reset_dead_every")
_FRACTIONS = ("val_fraction",)  # a share held out: some must be left to train on
_SHARES = ("reset_dead_until",)  # a share of the epochs, all of them included


def held_out_count(num_items: int, fraction: float, min_items: int = 1) -> int:
    """How many of ``num_items`` a learned fit holds out to validate on: ``fraction`` of them, none
    when that is under ``min_items``, and never all of them (at least one is left to train on)."""
    count = round(num_items * fraction)
    return min(count, num_items - 1) if count >= min_items else 0


def check_finite_loss(loss: float, spec: QuantizerSpec, epoch: int, lr: float) -> None:
    """SemidError when a learned fit's loss is no longer finite: its weights have diverged (NaN),
    so every item would get one code and the saved quantizer could not be loaded."""
    if not math.isfinite(loss):
        raise SemidError(f"fitting {spec} diverged (its loss is {loss} after epoch {epoch + 1}); "
                         f"lower its lr (now {lr:g}) or scale the embeddings down")  # fmt: skip


def with_train_overrides(config: Any, overrides: dict[str, Any], extra: Sequence[str] = ()) -> Any:
    """A copy of the training ``config`` (a dataclass) with ``overrides`` applied and checked
    (`check_train_config`); SemidError naming unknown options and the known ones (with ``extra``,
    the fit keywords that are not training options)."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SemidError(f"unknown fit option(s) {', '.join(unknown)}; known: "
                         f"{', '.join([*extra, *sorted(known)])}")  # fmt: skip
    config = dataclasses.replace(config, **overrides)
    check_train_config(config)
    return config


def check_train_config(config: Any) -> None:
    """SemidError naming the first training option out of its range: a count below 1, a negative
    weight or learning rate, a share outside [0, 1] (a held-out fraction: [0, 1)), a seed or a
    patience that is no integer (patience may be None: no early stopping)."""
    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        number = (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
        integer = isinstance(value, int) and not isinstance(value, bool)
        if name in _COUNTS and not (integer and value >= 1):
            need = "an integer >= 1"
        elif name in _NON_NEGATIVE_COUNTS and not (integer and value >= 0):
            need = "an integer >= 0"
        elif name in _NON_NEGATIVE and not (number and value >= 0):
            need = "a number >= 0"
        elif name in _FRACTIONS and not (number and 0 <= value < 1):
            need = "a fraction in [0, 1)"
        elif name in _SHARES and not (number and 0 <= value <= 1):
            need = "a share in [0, 1]"
        elif name == "seed" and not integer:
            need = "an integer"
        elif name == "patience" and not (
            (integer and value >= 1) or (value is None and f.default is None)
        ):
            need = "an integer >= 1" + (
                ", or None (no early stopping)" if f.default is None else ""
            )
        else:
            continue
        raise SemidError(f"fit option {name} must be {need}, got {value!r}")


def build_quantizer(spec: str | QuantizerSpec, dim: int | None = None, **kwargs: Any) -> Quantizer:
    """Build an unfitted quantizer from a spec string, e.g. ``build_quantizer("rqkmeans:3x256")``.

    `dim` may be left out: ``fit`` then sizes the model from its input."""
    if isinstance(spec, str):
        spec = QuantizerSpec.parse(spec)
    elif not isinstance(spec, QuantizerSpec):
        raise SemidError(f"a quantizer spec is a string such as 'rqkmeans:3x256', got {spec!r}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise SemidError(f"dim must be an integer >= 1 (or None: fit sizes it), got {dim!r}")
    cls = quantizer_class(spec.family)
    takes = [
        n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "spec", "dim")
    ]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise SemidError(f"unknown option(s) {', '.join(unknown)} for {spec.family}; it takes "
                         f"{', '.join(takes) or 'only spec and dim'} (fit options go to fit)")  # fmt: skip
    return cls(spec, dim, **kwargs)
