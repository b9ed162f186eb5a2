"""The quantizer protocol in semid.quantization: spec strings, the registry, the base class."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import semid.quantization as quantization
from semid.errors import SemidError
from semid.quantization import (
    MAX_CODES_PER_LEVEL,
    MAX_LEVELS,
    Quantizer,
    QuantizerSpec,
    available_quantizers,
    build_quantizer,
    quantizer_class,
    register_quantizer,
)

# --- spec strings ---


@pytest.mark.parametrize(
    "text", ["rqkmeans:3x256", "hrq:3x256,c=1.0", "rqvae:4x1024,beta=0.25,latent=32", "a_1:1x2"]
)
def test_spec_round_trips(text):
    assert str(QuantizerSpec.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [(f"a:{MAX_LEVELS + 1}x2", "use at most 16 levels"), (f"a:2x{MAX_CODES_PER_LEVEL + 1}", "1,048,576 codes"),
     ("a:2x4,b=1,b=2", "option b is given twice; keep one")],
)  # fmt: skip
def test_a_spec_beyond_the_bounds_or_with_an_option_twice_is_refused(text, words):
    with pytest.raises(SemidError, match=words):
        QuantizerSpec.parse(text)


@given(
    family=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    levels=st.integers(1, MAX_LEVELS),
    size=st.integers(2, MAX_CODES_PER_LEVEL),
    options=st.dictionaries(
        st.from_regex(r"[a-z][a-z_]{0,6}", fullmatch=True),
        st.from_regex(r"[a-z0-9.\-]{1,6}", fullmatch=True),
        max_size=3,
    ),
)
def test_any_spec_round_trips(family, levels, size, options):
    spec = QuantizerSpec(family, levels, size, options)
    assert QuantizerSpec.parse(str(spec)) == spec


def test_spec_fields_and_sorted_options():
    spec = QuantizerSpec.parse("  rqvae:4x512,z=1,beta=0.5 ")
    assert (spec.family, spec.levels, spec.codebook_size) == ("rqvae", 4, 512)
    assert spec.options == {"z": "1", "beta": "0.5"}
    assert str(spec) == "rqvae:4x512,beta=0.5,z=1"  # canonical: options sorted
    assert QuantizerSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "rqkmeans",
        "rqkmeans:3",
        "rqkmeans:3x",
        "RQ:3x256",
        "rqkmeans:3x256,",
        "rqkmeans:3x256,beam",
        "rqkmeans:0x256",
        "rqkmeans:3x1",
        "rqkmeans:-3x256",
        "rqkmeans:3x256,a=1=2",
    ],
)
def test_bad_specs_name_the_expected_form(text):
    with pytest.raises(SemidError, match="spec"):
        QuantizerSpec.parse(text)


def test_typed_options():
    spec = QuantizerSpec.parse("hrq:3x8,c=0.5,n=4")
    assert spec.option("c", 1.0, float) == 0.5
    assert spec.option("n", 1, int) == 4
    assert spec.option("missing", 7, int) == 7
    with pytest.raises(SemidError, match="not a valid int"):
        spec.option("c", 1, int)


# --- registry ---


class MeanQuantizer(Quantizer):
    """A toy family: every level codes each row by the sign of its first coordinate."""

    def _build(self, dim: int) -> None:
        self.register_buffer("centers", torch.zeros(2, dim))

    def fit(self, x: Tensor, **kwargs) -> MeanQuantizer:
        x = self.check_input(x)
        self.build(x.shape[1])
        side = (x[:, 0] > 0).long()
        self.centers.copy_(torch.stack([x[side == s].mean(0) for s in (0, 1)]))
        self.initted.fill_(True)
        return self

    def encode(self, x: Tensor) -> Tensor:
        self.check_fitted()
        side = (self.check_input(x)[:, 0] > 0).long()
        return side[:, None].expand(-1, self.levels).clone()

    def decode(self, codes: Tensor) -> Tensor:
        self.check_fitted()
        return self.centers[codes[:, 0]]

    def last_level_distances(self, x: Tensor) -> Tensor:
        return torch.cdist(self.check_input(x), self.centers).pow(2)


@pytest.fixture
def toy_family(monkeypatch):
    """Register MeanQuantizer as "toy" for one test only."""
    monkeypatch.setitem(quantization._REGISTRY, "toy", MeanQuantizer)
    register_quantizer("toy")(MeanQuantizer)
    return "toy"


def test_builtin_families_are_registered():
    assert "rqkmeans" in available_quantizers()
    assert quantizer_class("rqkmeans").family == "rqkmeans"


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(SemidError, match="rqkmeans"):
        build_quantizer("nosuchfamily:3x256")


def test_build_from_string_or_spec(toy_family):
    a = build_quantizer("toy:2x2")
    b = build_quantizer(QuantizerSpec("toy", 2, 2), dim=3)
    assert isinstance(a, MeanQuantizer) and a.dim is None
    assert b.dim == 3 and b.centers.shape == (2, 3)
    assert a.levels == 2 and a.codebook_sizes == [2, 2]


# --- base class behaviour ---


def test_check_input_accepts_numpy_and_returns_float32(toy_family):
    q = build_quantizer("toy:1x2")
    out = q.check_input(np.ones((3, 4), dtype=np.float64))
    assert isinstance(out, Tensor) and out.dtype == torch.float32 and out.shape == (3, 4)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(4), "shape"),
        (torch.zeros(2, 3, 4), "shape"),
        (torch.zeros(0, 3), "N = 0"),
        (
            torch.tensor([[0.0, float("inf"), 0.0], [1.0, 1.0, float("nan")], [0.0, 0.0, 0.0]]),
            "2 rows of embeddings contain NaN or infinity",
        ),
        (torch.zeros(2, 5), "dimension 5"),
    ],
)
def test_check_input_rejects(toy_family, x, message):
    q = build_quantizer("toy:1x2", dim=3)
    with pytest.raises(SemidError, match=message):
        q.check_input(x)


def test_build_is_idempotent_and_refuses_a_new_dimension(toy_family):
    q = build_quantizer("toy:1x2", dim=3)
    centers = q.centers
    q.build(3)
    assert q.centers is centers
    with pytest.raises(SemidError, match="expects 3"):
        q.build(4)


def test_unfitted_quantizer_says_so(toy_family):
    q = build_quantizer("toy:1x2", dim=3)
    assert not bool(q.initted)
    with pytest.raises(SemidError, match="not fitted"):
        q.check_fitted()


def test_an_unfitted_quantizer_is_not_saved(toy_family, tmp_path):
    """It wrote a folder that no load could read ("no valid input dimension; save it again")."""
    with pytest.raises(SemidError, match="toy:1x2 is not fitted; call fit"):
        build_quantizer("toy:1x2").save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_weights_holding_nan_are_refused_on_load(toy_family, tmp_path):
    """A file that reads well but holds NaN weights encoded every input to one code, silently
    (infinity is left alone: an hrq ball of curvature 0 stores one)."""
    from safetensors.torch import load_file, save_file

    q = build_quantizer("toy:2x2").fit(torch.tensor([[1.0, 2.0], [-1.0, 0.0], [3.0, 4.0]]))
    q.save_pretrained(tmp_path / "q")
    weights = tmp_path / "q" / "model.safetensors"
    state = load_file(weights)
    state["centers"][0, 0] = float("nan")
    save_file(state, weights)  # as an earlier semid could write it: with no checksum recorded
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    del config["weights_sha256"]
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SemidError, match=f"{weights}: tensor centers holds NaN values; retrain"):
        Quantizer.from_pretrained(tmp_path / "q")


@pytest.mark.parametrize(
    ("change", "told"),
    [
        ({"colour": 1}, "unknown option"),
        ({"spec": ""}, "bad quantizer spec"),
        ({"spec": "nope:2x2"}, "unknown quantizer family 'nope'"),
    ],  # fmt: skip
)
def test_a_damaged_saved_config_is_named_with_its_file(toy_family, tmp_path, change, told):
    q = build_quantizer("toy:2x2").fit(torch.tensor([[1.0, 2.0], [-1.0, 0.0], [3.0, 4.0]]))
    q.save_pretrained(tmp_path / "q")
    config_file = tmp_path / "q" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["config"].update(change)
    config_file.write_text(json.dumps(saved))
    with pytest.raises(SemidError, match=f"^{config_file}: {told}.*; save it again"):
        Quantizer.from_pretrained(tmp_path / "q")


def test_save_pretrained_round_trip(toy_family, tmp_path):
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.0], [3.0, 4.0]])
    q = build_quantizer("toy:2x2").fit(x)
    q.save_pretrained(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["format_version"] == 2 and config["kind"] == "quantizer"
    assert config["name"] == "toy" and config["config"] == {"spec": "toy:2x2", "dim": 2}
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert isinstance(q2, MeanQuantizer) and bool(q2.initted)
    torch.testing.assert_close(q2.centers, q.centers)
    assert torch.equal(q2.encode(x), q.encode(x))


def test_save_replaces_an_earlier_save_and_refuses_other_folders(toy_family, tmp_path):
    """A save replaces the whole folder: an earlier save is replaced, but a folder holding
    anything else (the user's files, a model of another library) or a file path is refused and
    left as it was."""
    q = build_quantizer("toy:1x2").fit(torch.tensor([[1.0], [-1.0]]))
    q.save_pretrained(tmp_path / "q")
    q.save_pretrained(tmp_path / "q")  # over an earlier save
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    (tmp_path / "q" / "notes.txt").write_text("mine")
    with pytest.raises(SemidError, match=r"not a saved quantizer \(it holds notes.txt\)"):
        q.save_pretrained(tmp_path / "q")
    assert (tmp_path / "q" / "notes.txt").read_text() == "mine"
    with pytest.raises(SemidError, match="is a file; save the quantizer to a folder path"):
        q.save_pretrained(tmp_path / "q" / "config.json")
    assert Quantizer.from_pretrained(tmp_path / "q").spec == q.spec


def test_from_pretrained_on_a_wrong_folder(tmp_path):
    with pytest.raises(SemidError, match="not a saved quantizer"):
        Quantizer.from_pretrained(tmp_path)


def test_a_family_class_loads_only_its_own_family(tmp_path):
    from semid.quantizers.rqkmeans import ResidualKMeans

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    build_quantizer("rqvae:2x4").fit(x, epochs=1, min_steps=0, progress=False).save_pretrained(
        tmp_path / "q"
    )
    with pytest.raises(SemidError, match="holds a rqvae quantizer, not a rqkmeans"):
        ResidualKMeans.from_pretrained(tmp_path / "q")
    assert Quantizer.from_pretrained(tmp_path / "q").spec.family == "rqvae"


def test_fit_arguments_reach_the_cpu_through_lists_tuples_and_dataclasses():
    """A fit's tensors are moved to the CPU also inside an ``InteractionLog`` (a dataclass: a
    GPU log mixed devices in graph_rqvae) and lists; a namedtuple passes as it is (was a crash)."""
    from collections import namedtuple

    from semid.data import InteractionLog
    from semid.quantization import _on_cpu

    log = InteractionLog(torch.arange(4) % 2, torch.arange(4), torch.arange(4), 2, 4)
    moved = _on_cpu([log, (torch.ones(2),)])
    assert isinstance(moved[0], InteractionLog) and torch.equal(moved[0].items, log.items)
    assert isinstance(moved[1], tuple) and torch.equal(moved[1][0], torch.ones(2))
    Pair = namedtuple("Pair", "a b")
    assert _on_cpu(Pair(1, 2)) == Pair(1, 2)


def test_the_family_classes_are_exported_and_a_quantizer_shows_its_spec():
    import semid.quantizers as package

    assert all(hasattr(package, name) for name in package.__all__)
    assert isinstance(build_quantizer("rqkmeans:2x4"), package.ResidualKMeans)
    fitted = build_quantizer("rqkmeans:2x4").fit(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    )
    assert repr(fitted) == "ResidualKMeans(rqkmeans:2x4, dim=8, fitted=True)"


def test_a_family_and_the_saved_versions_import_only_what_they_need():
    """rqkmeans alone imported every family (hrq's geoopt and scipy), and saving a module's
    versions imported transformers: about a second each on every `index build` and `add`."""
    script = (
        "import sys\n"
        "from semid.quantization import build_quantizer\n"
        "from semid.saving import versions\n"
        "build_quantizer('rqkmeans:2x4')\n"
        "assert versions()['transformers']\n"
        "print(sorted(m for m in ('geoopt', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
