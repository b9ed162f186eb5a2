"""The quantizer contract, checked for EVERY registered family (see semid/quantization.py).

A new family passes these tests with no edit here, unless it needs keyword arguments to fit
quickly (add them to FAST_FIT_KWARGS) or spec options to work on the tiny data (FAST_SPEC_OPTIONS).
The data is fixed: N rows of dimension D, so family kwargs may depend on these constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from semid.data import InteractionLog
from semid.errors import SemidError
from semid.quantization import Quantizer, available_quantizers, build_quantizer

N, D, LEVELS, CODES = 64, 16, 2, 8

# Per-family fit keywords that keep each fit to about a second on 2 CPU cores.
FAST_FIT_KWARGS: dict[str, dict[str, Any]] = {
    "rqkmeans": {"niter": 5},
    "rqvae": {"epochs": 3, "progress": False},
    "graph_rqvae": {
        "epochs": 3,
        "progress": False,
        "interactions": InteractionLog(
            torch.arange(2 * N) % 10, torch.arange(2 * N) % N, torch.arange(2 * N), 10, N
        ),
    },
    "hrq": {"epochs": 3, "progress": False},
    "voken": {"epochs": 3, "progress": False},
}
# Per-family spec options appended to FAMILY:2x8 (e.g. smaller hidden layers).
FAST_SPEC_OPTIONS: dict[str, str] = {}

FAMILIES = available_quantizers()


def spec_of(family: str) -> str:
    """The tiny spec used for `family`: ``FAMILY:2x8`` plus its FAST_SPEC_OPTIONS."""
    return f"{family}:{LEVELS}x{CODES}{FAST_SPEC_OPTIONS.get(family, '')}"


def data(seed: int = 0) -> torch.Tensor:
    """(N, D) float32: a few Gaussian clusters, so that codes carry structure."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, D, generator=g) * 2
    return centers[torch.randint(0, 6, (N,), generator=g)] + 0.3 * torch.randn(N, D, generator=g)


def fitted(family: str, seed: int = 0) -> Quantizer:
    """A quantizer of `family` fitted on data() with the given seed."""
    q = build_quantizer(spec_of(family))
    out = q.fit(data(), seed=seed, **FAST_FIT_KWARGS.get(family, {}))
    assert out is q, "fit must return self"
    return q


@pytest.fixture(scope="module", params=FAMILIES)
def family_and_model(request) -> tuple[str, Quantizer]:
    return request.param, fitted(request.param)


def test_registry_has_the_first_family():
    assert "rqkmeans" in FAMILIES


def test_spec_round_trips(family_and_model):
    family, q = family_and_model
    assert str(q.spec) == spec_of(family)
    assert q.levels == LEVELS and q.codebook_sizes == [CODES] * LEVELS
    assert type(build_quantizer(str(q.spec))) is type(q)


def test_encode_decode_shapes(family_and_model):
    _, q = family_and_model
    codes = q.encode(data())
    assert codes.shape == (N, LEVELS) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < CODES
    x_hat = q.decode(codes)
    assert x_hat.shape == (N, D) and torch.isfinite(x_hat).all()
    assert q.encode(data()[:1]).shape == (1, LEVELS)


def test_an_empty_batch_encodes_to_no_codes(family_and_model):
    _, q = family_and_model
    codes = q.encode(torch.zeros(0, D))
    assert codes.shape == (0, LEVELS) and codes.dtype == torch.int64
    assert q.decode(codes).shape == (0, D)
    with pytest.raises(SemidError, match="dimension"):  # the width is still checked
        q.encode(torch.zeros(0, D + 1))
    # as encode does: `index add` of no item with `reassign` asks for both
    assert q.last_level_distances(torch.zeros(0, D)).shape == (0, q.codebook_sizes[-1])


def test_encode_accepts_numpy(family_and_model):
    _, q = family_and_model
    assert torch.equal(q.encode(data().numpy()), q.encode(data()))


def test_last_level_distances(family_and_model):
    _, q = family_and_model
    x = data()
    dist = q.last_level_distances(x)
    assert dist.shape == (N, q.codebook_sizes[-1]) and (dist >= 0).all()
    # An item's own last code is its nearest one: the `reassign` strategy relies on it.
    own = dist.gather(1, q.encode(x)[:, -1:])
    torch.testing.assert_close(own[:, 0], dist.min(1).values)


def test_reconstruction_error_is_the_share_of_the_spread_the_decoded_codes_lose(family_and_model):
    _, q = family_and_model
    x = data()
    codes = q.encode(x)
    by_hand = (x - q.decode(codes)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    share = q.reconstruction_error(x)
    assert share == pytest.approx(float(by_hand), rel=1e-4)
    assert 0 <= share < 1  # clustered data: the IDs keep more than the mean item does
    # the codes given, and a few rows at a time, change nothing
    assert q.reconstruction_error(x, codes, batch=5) == pytest.approx(share, rel=1e-6)


def test_reconstruction_error_is_none_for_items_with_no_spread(family_and_model):
    _, q = family_and_model
    same = data()[:1].repeat(4, 1)
    assert q.reconstruction_error(same) is None
    # equal but for float32 rounding: a ratio of rounding errors (about 1e12) means nothing
    assert q.reconstruction_error(same + torch.tensor([[0.0], [1e-7], [0.0], [0.0]])) is None
    with pytest.raises(SemidError, match="3 rows of codes for 4 vectors"):
        q.reconstruction_error(same, q.encode(same)[:3])
    # a small spread far from the origin is a spread: measured, not None
    far = 1000 + 0.1 * data()
    by_hand = (far - q.decode(q.encode(far))).double().pow(2).sum() / (
        (far.double() - far.double().mean(0)).pow(2).sum()
    )
    assert q.reconstruction_error(far) == pytest.approx(float(by_hand), rel=1e-3)


def test_save_and_load_give_identical_codes(family_and_model, tmp_path):
    _, q = family_and_model
    q.save_pretrained(tmp_path / "q")
    assert {p.name for p in (tmp_path / "q").iterdir()} >= {"config.json", "model.safetensors"}
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert type(q2) is type(q) and str(q2.spec) == str(q.spec)
    codes = q.encode(data())
    assert torch.equal(q2.encode(data()), codes)
    torch.testing.assert_close(q2.decode(codes), q.decode(codes))


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_is_deterministic_given_a_seed(family):
    a, b = fitted(family, seed=3), fitted(family, seed=3)
    assert torch.equal(a.encode(data()), b.encode(data()))


@pytest.mark.parametrize("family", FAMILIES)
def test_build_and_fit_leave_the_global_rng_alone(family):
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    fitted(family)  # built lazily by fit, so its initial weights are drawn here
    assert torch.equal(torch.rand(4), expected)


def test_a_voken_built_for_features_then_fit_with_texts_leaves_the_global_rng_alone():
    q = build_quantizer(spec_of("voken"), dim=D)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    texts = torch.randn(N, 6, generator=torch.Generator().manual_seed(1))
    q.fit(data(), text_embeddings=texts, **FAST_FIT_KWARGS["voken"])  # rebuilt for the texts
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_unfitted_quantizer_refuses_to_encode(family):
    q = build_quantizer(spec_of(family), dim=D)
    with pytest.raises(SemidError, match="not fitted"):
        q.encode(data())
    with pytest.raises(SemidError, match="not fitted"):
        q.decode(torch.zeros(2, LEVELS, dtype=torch.long))


@pytest.mark.parametrize(
    "spec, dim", [(123, None), (None, None), ("rqkmeans:2x8", 0), ("rqkmeans:2x8", -3)]
)
def test_build_refuses_a_spec_that_is_no_string_and_a_dim_below_1(spec, dim):
    with pytest.raises(SemidError, match="spec is a string|dim must be an integer >= 1"):
        build_quantizer(spec, dim=dim)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(D),
        torch.zeros(0, D),
        torch.full((N, D), float("nan")),
        torch.zeros(N, 0),
        data() * 1e20,
    ],  # fmt: skip
    ids=["1-D", "empty", "nan", "no columns", "huge"],  # no columns: faiss killed the process
)
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_rejects_bad_input(family, bad):
    with pytest.raises(SemidError):
        build_quantizer(spec_of(family)).fit(bad, **FAST_FIT_KWARGS.get(family, {}))


def test_float64_values_beyond_float32_are_told_by_their_size_not_as_infinity():
    with pytest.raises(SemidError, match=r"reach values of .*e\+300, beyond 1e\+15; scale them"):
        build_quantizer("rqkmeans:2x4").fit(data().double() * 1e300)  # said "NaN or infinity"
    with pytest.raises(SemidError, match="NaN or infinity"):
        build_quantizer("rqkmeans:2x4").fit(data().double().fill_(float("inf")))


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_fit_option_is_named_with_the_known_ones(family):
    kwargs = {**FAST_FIT_KWARGS.get(family, {}), "colour": 1}
    with pytest.raises(SemidError, match=r"unknown fit option\(s\) colour;.*seed"):
        build_quantizer(spec_of(family)).fit(data(), **kwargs)


def test_encode_and_decode_reject_bad_input(family_and_model):
    _, q = family_and_model
    with pytest.raises(SemidError, match="dimension"):
        q.encode(torch.zeros(3, D + 1))
    with pytest.raises(SemidError):
        q.decode(torch.zeros(3, LEVELS + 1, dtype=torch.long))
    with pytest.raises(SemidError):
        q.decode(torch.full((3, LEVELS), CODES, dtype=torch.long))
    with pytest.raises(SemidError):
        q.decode(torch.full((3, LEVELS), -1, dtype=torch.long))
    with pytest.raises(SemidError, match="must be an integer tensor"):  # 1.7 is not truncated to 1
        q.decode(torch.full((3, LEVELS), 1.7))
    for dtype in (torch.bool, torch.complex64):  # were read as 0/1, or lost their imaginary part
        with pytest.raises(SemidError, match=f"embeddings must be real numbers, got {dtype}"):
            q.encode(torch.ones(3, D, dtype=dtype))
    rows = np.empty(
        2, dtype=object
    )  # an object array (as pickled ragged rows load) and ragged lists
    rows[:] = [np.zeros(D), np.zeros(D - 1)]
    with pytest.raises(SemidError, match="numbers of one shape.*an array of object; give a float"):
        q.encode(rows)
    with pytest.raises(SemidError, match=r"numbers of one shape \(N, D\), got list \(expected"):
        q.encode([[0.0] * D, [0.0] * (D - 1)])


@pytest.mark.parametrize(
    "spec, options, message",
    [
        (
            "rqvae:2x8",
            {"batch_size": 0},
            "batch_size must be an integer >= 1, got 0",
        ),  # was ZeroDivisionError
        ("rqvae:2x8", {"lr": -1.0}, "lr must be a number >= 0"),
        ("hrq:2x8", {"epochs": 0}, "epochs must be an integer >= 1"),  # was "fitted", never trained
        ("voken:2x8", {"val_fraction": 1.5}, "val_fraction must be a fraction in [0, 1)"),
        ("hrq:2x8", {"patience": 0}, "patience must be an integer >= 1, or None"),
        (
            "rqvae:2x8",
            {"patience": None},
            "patience must be an integer >= 1, got None",
        ),  # rqvae needs one
        ("rqvae:2x8", {"reset_dead_every": 0.5}, "reset_dead_every must be an integer >= 0"),
        ("rqkmeans:2x8", {"epochs": 3}, "rqkmeans takes seed, niter and progress"),  # was TypeError
        ("rqkmeans:2x8", {"seed": None}, "seed must be an integer, got None"),
        ("rqkmeans:2x8", {"niter": 0}, "niter must be an integer >= 1"),
    ],
)
def test_fit_options_out_of_range_are_one_clear_error(spec, options, message):
    with pytest.raises(SemidError) as error:
        build_quantizer(spec).fit(data(), progress=False, **options)
    assert message in str(error.value)


def test_build_names_an_option_the_family_does_not_take():
    with pytest.raises(
        SemidError, match="unknown option.s. epochs for rqkmeans; it takes only spec and dim"
    ):
        build_quantizer("rqkmeans:2x8", epochs=3)  # was a TypeError from the constructor


def test_a_seed_past_a_c_int_still_fits():
    """faiss takes its seed as a C int: a seed up to the CLI's 2**32 - 1 is mapped to one."""
    codes = build_quantizer("rqkmeans:2x8").fit(data(), seed=2**32 - 1, niter=2).encode(data())
    assert codes.shape == (N, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
@pytest.mark.parametrize("family", FAMILIES)
def test_a_fit_on_gpu_inputs_gives_the_cpus_quantizer_on_the_gpu(family):
    """Fits compute on the CPU whatever the inputs' device (was: device mix-ups deep in torch),
    then the quantizer sits on the inputs' GPU and encodes them there."""
    on_cpu = fitted(family)
    kwargs = {
        k: (v.cuda() if isinstance(v, torch.Tensor) else v)
        for k, v in FAST_FIT_KWARGS.get(family, {}).items()
    }
    on_gpu = build_quantizer(spec_of(family)).fit(data().cuda(), seed=0, **kwargs)
    assert {t.device.type for t in on_gpu.state_dict().values()} == {"cuda"}
    for name, value in on_cpu.state_dict().items():
        assert torch.equal(on_gpu.state_dict()[name].cpu(), value), name
    codes = on_gpu.encode(data().cuda())
    assert codes.device.type == "cuda"
    assert (codes.cpu() == on_cpu.encode(data())).all(1).float().mean() >= 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
@pytest.mark.parametrize("collisions", ["extra-level", "popularity", "reassign"])
def test_an_index_of_gpu_codes_is_the_index_of_their_cpu_copy(collisions):
    """A GPU quantizer's codes, distances and counts index (from_codes, add) as their CPU copies
    do, as the README's Python API shows (was: device mix-ups in the collision strategies)."""
    from semid.ids import SemanticIDs

    quantizer = fitted("rqkmeans").cuda()
    x = data().cuda()
    codes, distances = quantizer.encode(x), quantizer.last_level_distances(x)
    popularity = torch.arange(N, device="cuda")
    keys = [str(i) for i in range(N)]
    sizes = quantizer.codebook_sizes
    options = {"distances": distances, "popularity": popularity}
    on_gpu = SemanticIDs.from_codes(keys[:-5], codes[:-5], sizes, collisions,
                                    **{k: v[:-5] for k, v in options.items()})  # fmt: skip
    on_cpu = SemanticIDs.from_codes(keys[:-5], codes[:-5].cpu(), sizes, collisions,
                                    **{k: v[:-5].cpu() for k, v in options.items()})  # fmt: skip
    assert torch.equal(on_gpu.codes, on_cpu.codes) and on_gpu.sha256() == on_cpu.sha256()
    added = on_gpu.add(keys[-5:], codes[-5:], distances[-5:])
    assert torch.equal(added, on_cpu.add(keys[-5:], codes[-5:].cpu(), distances[-5:].cpu()))
