"""Bit-for-bit repeatable training on the CPU (semid.determinism): the same seed and data give the
same weights whatever order torch's threads finish in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _two_process_train import make_dataset, make_model
from conftest import TINY_BERT
from test_interaction_vectors import two_taste_log
from test_training import tiny_config

from semid.determinism import repeatable, seeded_cpu_rng
from semid.generators.promptdsi_layers import load_encoder
from semid.layers import reset_seeded_
from semid.quantization import build_quantizer
from semid.quantizers.rqvae import RQVAE
from semid.tasks.items import interaction_vectors
from semid.training import Trainer


def indexed_gradient(
    codebooks: torch.Tensor, levels: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """The gradient of a sum over ``codebooks[levels, codes]``, as voken's prefix sums take it."""
    table = codebooks.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, len(codes) * table.shape[-1]).view(len(codes), -1)
    (table[levels, codes] * weights).sum().backward()
    return table.grad


def test_gradients_of_indexed_rows_add_up_in_a_fixed_order_on_two_threads():
    """Without ``repeatable`` two threads gave gradients that differed by up to 4e-6 between
    repeats of this sum (the helper's probe on a 2-core machine); within it every repeat is equal,
    and the caller's setting is back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        codebooks = torch.randn(3, 64, 32, generator=g)
        levels, codes = (
            torch.randint(0, 3, (4096,), generator=g),
            torch.randint(0, 64, (4096,), generator=g),
        )
        with repeatable():
            assert torch.are_deterministic_algorithms_enabled()
            first = indexed_gradient(codebooks, levels, codes)
            for _ in range(10):
                assert torch.equal(indexed_gradient(codebooks, levels, codes), first)
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_gpu_keeps_its_default_kernels():
    with repeatable("cuda:0"):  # no GPU is needed to see that nothing is switched on
        assert not torch.are_deterministic_algorithms_enabled()


def test_seeded_cpu_rng_seeds_the_cpu_and_gives_the_callers_state_back():
    torch.manual_seed(1)
    expected_after = torch.rand(4)
    torch.manual_seed(1)
    with seeded_cpu_rng(5):
        inside = torch.rand(4)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(torch.rand(4), expected_after)


SEEDED_CPU_WORK = {
    "reset_seeded_": lambda: reset_seeded_([torch.nn.Linear(3, 2)], seed=3),
    "interaction_vectors": lambda: interaction_vectors(two_taste_log(), seed=3, dim=4),
    "load_encoder": lambda: load_encoder(
        SimpleNamespace(encoder_config=dict(TINY_BERT), encoder_seed=3)
    ),
}


@pytest.mark.parametrize("work", SEEDED_CPU_WORK)
def test_seeded_cpu_work_leaves_the_gpus_generators_alone(work, monkeypatch):
    """``torch.manual_seed`` in these reseeded every GPU's generator, which their fork did not
    restore (the caller's GPU dropout then drew other numbers); they seed the CPU's only."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    SEEDED_CPU_WORK[work]()
    assert reseeded == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
def test_seeded_cpu_work_keeps_the_gpus_random_state():
    before = torch.cuda.get_rng_state()
    for work in SEEDED_CPU_WORK.values():
        work()
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_training_and_quantizer_fits_run_repeatably(tmp_path, monkeypatch):
    seen = []
    model = make_model()
    forward = model.forward

    def recording(batch):
        seen.append(("trainer", torch.are_deterministic_algorithms_enabled()))
        return forward(batch)

    monkeypatch.setattr(model, "forward", recording)
    Trainer(model, make_dataset(16), tiny_config(max_epochs=1), tmp_path / "run").fit()
    train = RQVAE._train

    def recording_train(self, *args, **kwargs):
        seen.append(("rqvae", torch.are_deterministic_algorithms_enabled()))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(RQVAE, "_train", recording_train)
    build_quantizer("rqvae:2x4,hidden=8,latent=4").fit(torch.randn(64, 6), epochs=1, progress=False)
    assert seen and all(on for _, on in seen) and {name for name, _ in seen} == {"trainer", "rqvae"}
    assert not torch.are_deterministic_algorithms_enabled()
