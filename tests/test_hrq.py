"""The ``hrq`` quantizer: spec, residual chain, boundary safety, hierarchy loss, save/load, determinism."""

import math
import os
import subprocess
import sys

import pytest
import torch

from semid.errors import SemidError
from semid.quantization import Quantizer, build_quantizer
from semid.quantizers import hyperbolic as hb

FAST = {"epochs": 3, "batch_size": 64, "progress": False}
_NO_EPOCHS = {"batch_size": 64, "progress": False}


def _clusters(n: int = 240, d: int = 12, k: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 3
    return centres[torch.arange(n) % k] + 0.1 * torch.randn(n, d, generator=g)


def test_spec_round_trip_and_bad_options():
    q = build_quantizer("hrq:3x256,c=1.0")
    assert str(q.spec) == "hrq:3x256,c=1.0" and q.c == 1.0 and q.levels == 3
    assert build_quantizer("hrq:2x8,c=0.5,latent=4,decoder=0").has_decoder is False
    bad_specs = ["c=-1", "curv=1", "latent=0", "c=abc", "decoder=2", "learn_c=-1"]
    for bad in [f"hrq:3x8,{option}" for option in bad_specs]:
        with pytest.raises(SemidError):
            build_quantizer(bad)


def test_encode_latent_checks_its_ball_points_as_encode_checks_embeddings():
    """NaN points took codes [0, 0], 1-D points 1-D codes, and the wrong width a torch error."""
    q = build_quantizer("hrq:2x4,latent=8", dim=8)
    with pytest.raises(SemidError, match="is not fitted; call fit"):
        q.encode_latent(torch.zeros(2, 8))
    q.initted.fill_(True)
    for bad, message in [
        (torch.full((2, 8), float("nan")), "2 rows of ball points contain NaN"),
        (torch.ones(8), r"expected ball points of shape \(N, D\), got \(8,\)"),
        (torch.ones(2, 5), "ball points have dimension 5 but the quantizer expects 8"),
    ]:
        with pytest.raises(SemidError, match=message):
            q.encode_latent(bad)
    assert q.encode_latent(torch.ones(2, 8) * 5).shape == (2, 2)  # off the ball: projected
    assert q.encode_latent(torch.zeros(0, 8)).shape == (0, 2)


@pytest.mark.parametrize("c", [1.0, 0.0])
def test_residual_chain_recovers_points_built_from_the_codebooks(c):
    q = build_quantizer(f"hrq:3x4,c={c},latent=8", dim=8)
    g = torch.Generator().manual_seed(0)
    # Codes shrink level by level, so greedy assignment can find each point's own codes again.
    books = torch.stack(
        [
            torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1) * s
            for s in (0.6, 0.15, 0.03)
        ]
    )
    q.codebooks.data.copy_(books)
    q.initted.fill_(True)
    codes = torch.cartesian_prod(torch.arange(4), torch.arange(4), torch.arange(4))  # all 64 IDs
    z = q.decode_latent(codes)
    assert torch.equal(q.encode_latent(z), codes)
    torch.testing.assert_close(q.decode_latent(q.encode_latent(z)), z, atol=1e-5, rtol=1e-4)
    manual = hb.mobius_add(
        q.ball,
        books[0, codes[:, 0]],
        hb.mobius_add(q.ball, books[1, codes[:, 1]], books[2, codes[:, 2]]),
    )
    torch.testing.assert_close(z, manual)


def test_fit_encode_decode_save_load(tmp_path):
    x = _clusters()
    q = build_quantizer("hrq:2x8,c=1.0,latent=4,hidden=16").fit(x, **FAST)
    codes = q.encode(x)
    assert codes.shape == (len(x), 2) and codes.dtype == torch.int64
    x_hat = q.decode(codes)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    assert q.last_level_distances(x).shape == (len(x), 8)
    q.save_pretrained(tmp_path / "q")
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert str(q2.spec) == str(q.spec)
    assert torch.equal(q2.encode(x), codes)
    torch.testing.assert_close(q2.decode(codes), x_hat)


def test_fit_is_deterministic():
    x = _clusters(seed=1)
    a = build_quantizer("hrq:2x8,latent=4,hidden=16").fit(x, seed=3, **FAST).encode(x)
    b = build_quantizer("hrq:2x8,latent=4,hidden=16").fit(x, seed=3, **FAST).encode(x)
    assert torch.equal(a, b)


FITS_IN_A_FRESH_PROCESS = """
import hashlib, torch
from semid.quantization import build_quantizer
x = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
for net in ("mlp", "hnn"):
    for _ in range(2):
        q = build_quantizer(f"hrq:3x16,net={net}")
        q.fit(x, seed=0, epochs=3, progress=False)
        h = hashlib.sha256(q.decode(q.encode(x)).numpy().tobytes())
        for _, v in sorted(q.state_dict().items()):
            h.update(v.detach().contiguous().numpy().tobytes())
        print(net, h.hexdigest())
for _ in range(4):  # a fitted quantizer's later calls, too, are bit-identical from the first
    print("embed", hashlib.sha256(q.embed(x).detach().numpy().tobytes()).hexdigest())
"""


def test_the_fits_of_a_process_are_bit_identical_from_the_first():
    """geoopt's TorchScript math was fused after its first calls: a process's first fit differed
    from its later ones in the last bits of every weight (and so could a code at a near tie)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FITS_IN_A_FRESH_PROCESS], capture_output=True,
                         text=True, env=env, check=True).stdout.split("\n")  # fmt: skip
    hashes = [line.split() for line in out if line]
    assert len(hashes) == 8
    for net in ("mlp", "hnn", "embed"):
        assert len({h for n, h in hashes if n == net}) == 1, net


def test_reconstruction_beats_the_mean_on_clustered_data():
    x = _clusters(n=300, k=6, seed=2)
    q = build_quantizer("hrq:2x8,c=1.0,latent=4,hidden=32").fit(
        x, epochs=40, batch_size=64, lr=3e-3, progress=False
    )
    mse = (q.decode(q.encode(x)) - x).pow(2).sum(-1).mean()
    assert mse < 0.5 * (x - x.mean(0)).pow(2).sum(-1).mean()


def test_stays_finite_when_pushed_against_the_boundary():
    # A huge clip lets exp_0 saturate at the ball's edge; inputs are large too.
    x = _clusters(seed=3) * 1e3
    q = build_quantizer("hrq:3x8,c=1.0,latent=4,hidden=16,clip=50").fit(x, **FAST)
    z = q.embed(x)
    assert torch.isfinite(z).all() and (z.norm(dim=-1) < 1).all()
    assert all(torch.isfinite(p).all() for p in q.parameters())
    assert torch.isfinite(q.decode(q.encode(x))).all()
    assert torch.isfinite(q.last_level_distances(x)).all()
    edge = torch.nn.functional.normalize(torch.randn(50, 4), dim=-1)  # exactly on the sphere
    assert (q.encode_latent(edge) >= 0).all()


def _ancestor_auc(q, x, ancestors):
    """Share of (ancestor, non-ancestor) pairs that a node sees in the right distance order."""
    z = q.embed(x)
    d = hb.pairwise_distance(q.ball, z, z)
    scores = []
    for u in range(1, len(x)):
        others = ~ancestors[u]
        others[u] = False
        scores.append((d[u, ancestors[u]][:, None] < d[u, others][None, :]).float().mean())
    return float(torch.stack(scores).mean())


@pytest.mark.parametrize("c", [1.0, 0.0])
def test_hierarchy_loss_ranks_ancestors_before_other_items(c):
    # A complete binary tree of depth 5 (63 nodes); features are random, so only the pairs teach it.
    n = 63
    pairs = torch.tensor([(child, a) for child in range(1, n) for a in _ancestors_in_heap(child)])
    ancestors = torch.zeros(n, n, dtype=torch.bool)
    ancestors[pairs[:, 0], pairs[:, 1]] = True
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    spec = f"hrq:2x8,c={c},latent=4,hidden=32,decoder=0"
    kwargs = {
        "pairs": pairs,
        "batch_size": 64,
        "pair_batch": 64,
        "negatives": 32,
        "progress": False,
    }
    untrained = _ancestor_auc(
        build_quantizer(spec).fit(x, epochs=1, lr=0.0, **kwargs), x, ancestors
    )
    trained = _ancestor_auc(
        build_quantizer(spec).fit(x, epochs=50, lr=1e-2, **kwargs), x, ancestors
    )
    assert trained > 0.65 and trained > untrained + 0.08


def _ancestors_in_heap(node: int) -> list[int]:
    out = []
    while node > 0:
        node = (node - 1) // 2
        out.append(node)
    return out


def test_clear_errors():
    x = _clusters()
    with pytest.raises(SemidError, match="pairs"):
        build_quantizer("hrq:2x8,decoder=0").fit(x, **FAST)
    with pytest.raises(SemidError, match="unknown fit option"):
        build_quantizer("hrq:2x8").fit(x, epoch=1)
    with pytest.raises(SemidError, match="not fitted"):
        build_quantizer("hrq:2x8", dim=12).encode(x)
    q = build_quantizer("hrq:2x8,decoder=0,latent=4,hidden=16")
    q.fit(x, pairs=torch.tensor([[0, 1], [2, 3]]), **FAST)
    with pytest.raises(SemidError, match="no decoder"):
        q.decode(q.encode(x))
    assert not q.can_decode and q.reconstruction_error(x) is None  # nothing to measure it by


def test_early_stopping_ends_fit_and_keeps_the_curves():
    x = _clusters()
    pairs = torch.tensor([[i, i % 6] for i in range(6, 120)])
    val_pairs = torch.tensor([[i, i % 6] for i in range(120, 140)])
    q = build_quantizer("hrq:2x8,latent=4,hidden=16,decoder=0")
    q.fit(x, pairs=pairs, val_pairs=val_pairs, epochs=200, patience=2, lr=3e-2, **_NO_EPOCHS)
    s = q.fit_summary
    assert s["stopped_early"] and s["epochs"] < 200
    assert len(s["train_loss"]) == len(s["val_loss"]) == s["epochs"]
    assert s["best_epoch"] == s["epochs"] - 2  # the last `patience` epochs brought no gain
    # gains below min_delta do not count, so the kept epoch is the minimum up to that margin
    assert s["val_loss"][s["best_epoch"] - 1] == pytest.approx(min(s["val_loss"]), rel=1e-3)


def test_learned_curvature_moves_and_survives_save_load(tmp_path):
    x = _clusters()
    q = build_quantizer("hrq:2x8,c=1.0,learn_c=1,latent=4,hidden=16")
    q.fit(x, epochs=5, batch_size=64, lr=5e-2, progress=False)
    assert q.fit_summary["c"] != 1.0 and float(q.ball.c) > 0
    q.save_pretrained(tmp_path / "q")
    again = Quantizer.from_pretrained(tmp_path / "q")
    assert float(again.ball.c) == pytest.approx(float(q.ball.c))
    assert torch.equal(again.encode(x), q.encode(x))
    with pytest.raises(SemidError, match="learned curvature"):
        build_quantizer("hrq:2x8,c=0,learn_c=1")


@pytest.mark.parametrize("c", [1.0, 0.0])
def test_hyperbolic_embedding_network_fits_saves_and_loads(c, tmp_path):
    x = _clusters()
    q = build_quantizer(f"hrq:2x8,c={c},net=hnn,latent=4,hidden=16").fit(x, **FAST)
    assert isinstance(q.encoder, hb.HyperbolicMLP) and isinstance(q.decoder, hb.HyperbolicMLP)
    codes = q.encode(x)
    assert torch.isfinite(q.embed(x)).all() and torch.isfinite(q.decode(codes)).all()
    q.save_pretrained(tmp_path / "q")
    assert torch.equal(Quantizer.from_pretrained(tmp_path / "q").encode(x), codes)
    with pytest.raises(SemidError, match="net"):
        build_quantizer("hrq:2x8,net=gnn")


def test_a_collection_too_small_to_hold_items_out_validates_on_its_training_items():
    q = build_quantizer("hrq:2x2,latent=4,hidden=16").fit(
        _clusters(4), patience=2, epochs=12, **_NO_EPOCHS
    )
    assert all(math.isfinite(v) for v in q.fit_summary["val_loss"])  # it was NaN: stopped at 2
    assert q.fit_summary["epochs"] > 2


def test_a_diverging_fit_is_refused():
    with pytest.raises(SemidError, match="diverged"):
        build_quantizer("hrq:2x8,latent=4,hidden=16").fit(_clusters(), lr=1e30, **FAST)
