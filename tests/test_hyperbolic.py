"""Poincaré-ball helpers against the closed-form formulas, and their float32 safety at the boundary."""

import pytest
import torch

from semid.quantizers import hyperbolic as hb


def _points(n: int, d: int, c: float, seed: int = 0, max_norm: float = 0.9) -> torch.Tensor:
    """Random points inside the ball of curvature -c, norms up to max_norm of the radius."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    r = torch.rand(n, 1, generator=g) * max_norm / c**0.5
    return x / x.norm(dim=-1, keepdim=True) * r


def _mobius_add_closed_form(x, y, c):
    xy, xx, yy = (
        (x * y).sum(-1, keepdim=True),
        (x * x).sum(-1, keepdim=True),
        (y * y).sum(-1, keepdim=True),
    )
    return ((1 + 2 * c * xy + c * yy) * x + (1 - c * xx) * y) / (1 + 2 * c * xy + c**2 * xx * yy)


@pytest.mark.parametrize("c", [1.0, 0.5, 2.0])
def test_mobius_add_and_distance_match_closed_forms(c):
    ball = hb.poincare_ball(c)
    x, y = _points(64, 5, c, seed=1), _points(64, 5, c, seed=2)
    torch.testing.assert_close(
        hb.mobius_add(ball, x, y), _mobius_add_closed_form(x, y, c), atol=1e-5, rtol=1e-4
    )
    # d(x, y) = 2/sqrt(c) artanh(sqrt(c) ||(-x) ⊕ y||)
    expected = 2 / c**0.5 * torch.atanh(c**0.5 * _mobius_add_closed_form(-x, y, c).norm(dim=-1))
    torch.testing.assert_close(hb.distance(ball, x, y), expected, atol=1e-4, rtol=1e-4)
    pairwise = hb.pairwise_distance(ball, x, y)
    torch.testing.assert_close(pairwise.diagonal(), expected, atol=2e-3, rtol=2e-3)
    assert torch.equal(hb.nearest_code(ball, x, y), pairwise.argmin(-1))


@pytest.mark.parametrize("c", [1.0, 0.3])
def test_exp_map_and_residual_cancellation(c):
    ball = hb.poincare_ball(c)
    v = torch.randn(32, 4, generator=torch.Generator().manual_seed(3)) * 0.7
    norm = v.norm(dim=-1, keepdim=True)
    expected = torch.tanh(c**0.5 * norm) * v / (c**0.5 * norm)
    torch.testing.assert_close(hb.to_ball(ball, v), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hb.to_tangent(ball, expected), v, atol=1e-4, rtol=1e-4)
    x, code = _points(32, 4, c, seed=4, max_norm=0.7), _points(32, 4, c, seed=5, max_norm=0.7)
    residual = hb.mobius_residual(ball, x, code)
    torch.testing.assert_close(residual, _mobius_add_closed_form(-code, x, c), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        hb.mobius_add(ball, code, residual), x, atol=1e-5, rtol=1e-4
    )  # code ⊕ ((-code) ⊕ x) = x


def test_curvature_zero_is_euclidean():
    ball = hb.poincare_ball(0.0)
    x, y = torch.randn(16, 3), torch.randn(16, 3)
    torch.testing.assert_close(hb.mobius_add(ball, x, y), x + y)
    torch.testing.assert_close(hb.mobius_residual(ball, x, y), x - y)
    torch.testing.assert_close(
        hb.distance(ball, x, y), 2 * (x - y).norm(dim=-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        hb.pairwise_distance(ball, x, y).diagonal(), 2 * (x - y).norm(dim=-1), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(hb.mobius_chain(ball, torch.stack([x, y, x], 1)), 2 * x + y)
    with pytest.raises(ValueError, match="curvature"):
        hb.poincare_ball(-1.0)


def test_finite_values_and_gradients_at_the_boundary():
    ball = hb.poincare_ball(1.0)
    v = (torch.randn(64, 6) * 1e4).requires_grad_()  # tangent vectors far beyond any float32 tanh
    z = hb.to_ball(ball, v)
    assert torch.isfinite(z).all() and (z.norm(dim=-1) < 1).all()
    edge = torch.nn.functional.normalize(torch.randn(64, 6), dim=-1) * (
        1 - 1e-7
    )  # rounds onto the sphere
    for a, b in [(z, edge), (edge, edge.flip(0)), (edge, edge)]:
        assert torch.isfinite(hb.distance(ball, a, b)).all()
        assert torch.isfinite(hb.pairwise_distance(ball, a, b)).all()
        assert torch.isfinite(hb.mobius_residual(ball, a, b)).all()
        assert torch.isfinite(hb.to_tangent(ball, hb.mobius_add(ball, a, b))).all()
    (hb.distance(ball, z, edge).sum() + hb.pairwise_distance(ball, z, edge).sum()).backward()
    assert torch.isfinite(v.grad).all()


def test_hyperbolic_mlp_is_the_euclidean_mlp_at_curvature_zero():
    torch.manual_seed(0)
    net = hb.HyperbolicMLP(hb.poincare_ball(0.0), [6, 8, 3])
    first, last = net.linears
    x = torch.randn(5, 6)
    expected = last(torch.nn.functional.silu(first(x)))
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_hyperbolic_mlp_layer_is_mobius_matvec_then_mobius_bias():
    ball = hb.poincare_ball(1.0)
    torch.manual_seed(0)
    net = hb.HyperbolicMLP(ball, [4, 3])
    x = _points(6, 4, 1.0)
    w, b = net.linears[0].weight, net.linears[0].bias
    # W ⊗ x = tanh(|Wx|/|x| artanh|x|) Wx/|Wx| (c = 1), then ⊕ exp_0(b).
    wx = x @ w.T
    xn, wxn = x.norm(dim=-1, keepdim=True), wx.norm(dim=-1, keepdim=True)
    matvec = torch.tanh(wxn / xn * torch.atanh(xn)) * wx / wxn
    bias = torch.tanh(b.norm()) * b / b.norm()
    expected = _mobius_add_closed_form(matvec, bias.expand_as(matvec), 1.0)
    out = net(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert (out.norm(dim=-1) < 1).all()
