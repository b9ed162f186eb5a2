"""rqvae and its residual codebooks: round trips, determinism, dead codes, estimators, resume."""

from __future__ import annotations

import pytest
import torch

from semid.errors import SemidError
from semid.quantization import Quantizer, build_quantizer
from semid.quantizers.residual import (
    ResidualCodebooks,
    code_usage,
    rotation_trick,
    straight_through,
)
from semid.quantizers.rqvae import RQVAE
from semid.saving import write_module

N, D = 96, 8
SPEC = "rqvae:2x8,hidden=16,latent=4"
FAST = {"epochs": 4, "progress": False}


def data(seed: int = 0) -> torch.Tensor:
    """(N, D): a few Gaussian clusters."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, D, generator=g) * 2
    return centers[torch.randint(0, 5, (N,), generator=g)] + 0.3 * torch.randn(N, D, generator=g)


@pytest.fixture(scope="module")
def fitted() -> RQVAE:
    return build_quantizer(SPEC).fit(data(), **FAST)


def test_round_trip_shapes(fitted):
    codes = fitted.encode(data())
    assert codes.shape == (N, 2) and codes.dtype == torch.int64
    assert fitted.decode(codes).shape == (N, D)
    assert fitted.last_level_distances(data()).shape == (N, 8)


def test_training_reduces_reconstruction_error():
    short = build_quantizer(SPEC).fit(data(), epochs=1, progress=False)
    long = build_quantizer(SPEC).fit(data(), epochs=60, progress=False)

    def mse(q):
        return float((q.decode(q.encode(data())) - data()).pow(2).mean())

    assert mse(long) < mse(short)


def test_save_load_gives_identical_codes(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "q")
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert str(q2.spec) == SPEC
    codes = fitted.encode(data())
    assert torch.equal(q2.encode(data()), codes)
    torch.testing.assert_close(q2.decode(codes), fitted.decode(codes))


def test_same_seed_same_codes_other_seed_other_model():
    a = build_quantizer(SPEC).fit(data(), seed=5, **FAST)
    b = build_quantizer(SPEC).fit(data(), seed=5, **FAST)
    c = build_quantizer(SPEC).fit(data(), seed=6, **FAST)
    assert torch.equal(a.encode(data()), b.encode(data()))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.codebooks.codebooks, c.codebooks.codebooks)


def test_dead_codes_are_revived():
    g = torch.Generator().manual_seed(0)
    z = torch.cat(
        [torch.randn(50, 2, generator=g) * 0.1 + 1, torch.randn(50, 2, generator=g) * 0.1 - 1]
    )
    books = ResidualCodebooks(levels=1, size=4, dim=2)
    with torch.no_grad():  # two codes on the clusters, two far away where nothing lands
        books.codebooks[0] = torch.tensor(
            [[1.0, 1.0], [-1.0, -1.0], [100.0, 100.0], [-100.0, 100.0]]
        )
    usage = code_usage(books.encode(z), 4)
    assert usage[0, 2:].sum() == 0
    revived = books.reset_dead_codes_(books(z).residuals, usage, g)
    assert revived == 2
    assert (code_usage(books.encode(z), 4) > 0).all(), "every code should now be someone's nearest"


def test_live_codes_are_left_alone():
    books = ResidualCodebooks(levels=2, size=3, dim=2)
    before = books.codebooks.detach().clone()
    assert books.reset_dead_codes_(torch.randn(10, 2, 2), torch.ones(2, 3, dtype=torch.long)) == 0
    assert torch.equal(books.codebooks, before)


def test_kmeans_init_and_decode_of_own_codes():
    z = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    books = ResidualCodebooks(levels=2, size=4, dim=3)
    books.init_kmeans_(z)
    q = books(z)
    torch.testing.assert_close(books.decode(q.codes), q.z_q)
    # Quantizing with two k-means levels explains much of the variance of the data.
    assert (z - q.z_q).pow(2).sum(-1).mean() < 0.7 * z.pow(2).sum(-1).mean()


def test_each_level_quantizes_what_the_levels_before_it_left():
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    books = ResidualCodebooks(levels=3, size=8, dim=4)
    books.init_kmeans_(z)
    q = books(z)
    torch.testing.assert_close(q.residuals[:, 0], z)
    for level in range(1, 3):
        chosen = books.codebooks[level - 1, q.codes[:, level - 1]].detach()
        torch.testing.assert_close(q.residuals[:, level], q.residuals[:, level - 1] - chosen)
    chosen = books.codebooks[torch.arange(3), q.codes].detach()  # (N, L, d)
    errors = [(z - chosen[:, :n].sum(1)).pow(2).sum(-1).mean() for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]  # every level explains more of the data


@pytest.mark.parametrize("estimator", [straight_through, rotation_trick])
def test_estimators_forward_the_code_and_pass_gradients(estimator):
    z = torch.randn(5, 3, requires_grad=True)
    z_q = torch.randn(5, 3)
    out = estimator(z, z_q)
    torch.testing.assert_close(out, z_q)
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_straight_through_gradient_is_identity():
    z = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (straight_through(z, torch.zeros(4, 3)) * w).sum().backward()
    torch.testing.assert_close(z.grad, w)


def test_rotation_estimator_trains(tmp_path):
    q = build_quantizer(SPEC + ",estimator=rotation").fit(data(), **FAST)
    assert q.encode(data()).shape == (N, 2)


def test_early_stopping_ends_before_the_epoch_budget():
    q = build_quantizer(SPEC).fit(data(), epochs=500, patience=2, val_fraction=0.25, progress=False)
    assert q.fit_summary["epochs"] < 500


def test_interrupted_fit_resumes_to_the_same_model(tmp_path, monkeypatch):
    settings = {"epochs": 6, "checkpoint_every": 2, "progress": False, "val_fraction": 0.25}
    reference = build_quantizer(SPEC).fit(data(), **settings)

    calls = {"n": 0}
    original = RQVAE._eval_loss

    def interrupt_after_three_epochs(self, inputs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, inputs)

    monkeypatch.setattr(RQVAE, "_eval_loss", interrupt_after_three_epochs)
    with pytest.raises(KeyboardInterrupt):
        build_quantizer(SPEC).fit(data(), checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(RQVAE, "_eval_loss", original)
    assert (tmp_path / RQVAE.checkpoint_name).is_file()
    resumed = build_quantizer(SPEC).fit(data(), checkpoint_dir=tmp_path, **settings)
    assert torch.equal(resumed.encode(data()), reference.encode(data()))
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)


def test_checkpoint_of_other_data_is_refused(tmp_path):
    build_quantizer(SPEC).fit(
        data(), checkpoint_dir=tmp_path, epochs=2, checkpoint_every=1, progress=False
    )
    with pytest.raises(SemidError, match="checkpoint"):
        build_quantizer(SPEC).fit(data(seed=1), checkpoint_dir=tmp_path, epochs=2, progress=False)


def test_inputs_move_to_the_quantizers_device():
    """A quantizer fitted on GPU vectors stays there, and encoding CPU vectors with it failed inside
    torch (rqkmeans and hrq moved them); the meta device stands in for the GPU."""
    q = build_quantizer(SPEC).fit(data(), **FAST).to("meta")
    assert q._model_inputs(q.check_input(data())).device.type == "meta"
    # checking leaves them where they are: a fit on GPU vectors fits there (build_ids checks first)
    assert q.check_input(data()).device.type == "cpu"


def test_unwritable_checkpoint_dir_is_named_in_the_callers_words(tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("")
    with pytest.raises(SemidError, match="a file has that name; give a writable checkpoint_dir"):
        build_quantizer(SPEC).fit(data(), checkpoint_dir=taken, **FAST)


@pytest.mark.parametrize(
    "option", ["estimator=nope", "hidden=a-b", "latent=0", "beta=-1", "colour=red"]
)
def test_bad_spec_options_are_rejected(option):
    with pytest.raises(SemidError, match=option.split("=")[0]):
        build_quantizer(f"{SPEC},{option}")


def test_unknown_fit_argument_is_rejected():
    with pytest.raises(SemidError, match="epochz"):
        build_quantizer(SPEC).fit(data(), epochz=3)


def test_decode_rejects_out_of_range_codes(fitted):
    with pytest.raises(SemidError):
        fitted.decode(torch.full((2, 2), 8))
    with pytest.raises(SemidError):
        fitted.decode(torch.zeros(2, 3, dtype=torch.long))


def test_a_diverging_fit_is_refused_and_nothing_unloadable_is_written(tmp_path):
    q = build_quantizer(SPEC)
    with pytest.raises(SemidError, match=r"diverged .*lower its lr \(now 1e\+30\)"):
        q.fit(data(), lr=1e30, **FAST)
    with pytest.raises(SemidError, match="not fitted"):
        q.save_pretrained(tmp_path / "q")
    weights = torch.nn.Linear(2, 2)
    with torch.no_grad():
        weights.weight[0, 0] = float("nan")
    with pytest.raises(SemidError, match="tensor weight holds NaN values .*train it again"):
        write_module(tmp_path / "m", "model", "linear", {}, weights)  # load_state refuses it
    assert not (tmp_path / "q").exists() and not (tmp_path / "m").exists()


def test_a_held_out_share_that_takes_every_item_leaves_one_to_train_on():
    q = build_quantizer(SPEC).fit(data(), val_fraction=0.999, min_val_items=1, **FAST)
    assert q.encode(data()).shape == (N, 2)  # it gave an IndexError from k-means on no rows


def test_a_foreign_file_in_the_checkpoint_folder_is_one_clear_error(tmp_path):
    torch.save({"a": 1}, tmp_path / RQVAE.checkpoint_name)
    with pytest.raises(SemidError, match="not a semid fit checkpoint"):
        build_quantizer(SPEC).fit(data(), checkpoint_dir=tmp_path, **FAST)
