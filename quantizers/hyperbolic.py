"""Poincaré-ball helpers on top of ``geoopt`` for the hyperbolic quantizer (``hrq``).

Points live in the ball of curvature -c, ||x|| < 1/sqrt(c). Curvature c = 0 is the Euclidean limit
of the same formulas (geoopt's stereographic model): Möbius addition becomes +, the distance
2 ||x - y||, so ``hrq`` with c=0 is a Euclidean residual quantizer with the very same code path.
Every function keeps float32 finite near the boundary: points are projected, norms clamped.
"""

from __future__ import annotations

import geoopt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-6  # floor for norms and for 1 - c||x||^2 in float32


def poincare_ball(c: float, learnable: bool = False) -> geoopt.PoincareBall:
    """The Poincaré ball of curvature -c (c >= 0; c = 0 is flat space).

    With `learnable`, c (> 0, kept positive by geoopt's softplus) is a parameter trained with the
    rest of the model; flat space cannot be learned."""
    if c < 0 or (learnable and c == 0):
        raise ValueError(f"curvature c must be >= 0 (> 0 when learned), got {c}")
    return geoopt.PoincareBall(c=c, learnable=learnable)


def project(ball: geoopt.PoincareBall, x: Tensor) -> Tensor:
    """x (..., d) pulled just inside the ball (geoopt keeps a float32 margin of 4e-3)."""
    return ball.projx(x)


def to_ball(ball: geoopt.PoincareBall, v: Tensor, max_norm: float | None = None) -> Tensor:
    """exp_0 of tangent vectors v (..., d), their norm first clipped to `max_norm`.

    Clipping in the tangent space (Guo et al. 2022, "Clipped hyperbolic classifiers") bounds the
    distance from the origin by 2 * max_norm, which keeps points off the boundary and gradients
    alive; with c = 0 it is the same bound on a Euclidean radius."""
    if max_norm is not None:
        norm = v.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        v = v * (max_norm / norm).clamp(max=1.0)
    return project(ball, ball.expmap0(v))


def to_tangent(ball: geoopt.PoincareBall, x: Tensor) -> Tensor:
    """log_0 of ball points x (..., d): tangent vectors at the origin."""
    return ball.logmap0(project(ball, x))


def mobius_add(ball: geoopt.PoincareBall, x: Tensor, y: Tensor) -> Tensor:
    """x ⊕ y (..., d), projected into the ball."""
    return project(ball, ball.mobius_add(x, y))


def mobius_residual(ball: geoopt.PoincareBall, x: Tensor, code: Tensor) -> Tensor:
    """What a code leaves of x: (-code) ⊕ x (..., d), so that code ⊕ residual = x."""
    return project(ball, ball.mobius_add(-code, x))


def mobius_chain(ball: geoopt.PoincareBall, codes: Tensor) -> Tensor:
    """e_1 ⊕ (e_2 ⊕ (... ⊕ e_L)) of codes (..., L, d): the point whose residual chain gives them."""
    out = codes[..., -1, :]
    for level in range(codes.shape[-2] - 2, -1, -1):
        out = mobius_add(ball, codes[..., level, :], out)
    return out


def distance(ball: geoopt.PoincareBall, x: Tensor, y: Tensor) -> Tensor:
    """Geodesic distance (...) between broadcastable points x and y (..., d)."""
    return ball.dist(x, y)


def pairwise_distance(ball: geoopt.PoincareBall, x: Tensor, y: Tensor) -> Tensor:
    """Distances (N, K) between rows of x (N, d) and y (K, d), in O(N K) memory.

    Uses d = arcosh(1 + 2c ||x - y||^2 / ((1 - c||x||^2)(1 - c||y||^2))) / sqrt(c), which needs only
    the Gram matrix; with c = 0 it is 2 ||x - y||, matching ``distance``. Accurate enough to rank
    codes; use ``distance`` where the loss needs exact small distances."""
    c = ball.c  # a tensor: gradients reach a learned curvature
    xx, yy = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1)
    sq = (xx - 2 * x @ y.T + yy).clamp_min(0)  # (N, K)
    if float(c.detach()) == 0:
        return 2 * sq.clamp_min(_EPS**2).sqrt()
    denom = (1 - c * xx).clamp_min(_EPS) * (1 - c * yy).clamp_min(_EPS)
    arg = 1 + 2 * c * sq / denom
    return torch.acosh(arg.clamp_min(1 + _EPS)) / c.sqrt()


def nearest_code(ball: geoopt.PoincareBall, x: Tensor, codebook: Tensor) -> Tensor:
    """Index (N,) int64 of the code in codebook (K, d) nearest to each row of x (N, d)."""
    c = float(ball.c.detach())
    xx, yy = x.pow(2).sum(-1, keepdim=True), codebook.pow(2).sum(-1)
    sq = (xx - 2 * x @ codebook.T + yy).clamp_min(0)
    if c == 0:
        return sq.argmin(-1)
    # arcosh is increasing, so ranking by the ratio avoids it (and its float32 flatness near 1).
    return (sq / ((1 - c * yy).clamp_min(_EPS))).argmin(-1)


class HyperbolicMLP(nn.Module):
    """Ball points (N, w_0) -> ball points (N, w_k) by hyperbolic layers (Ganea et al. 2018).

    Each layer is (W ⊗ x) ⊕ b: Möbius matrix-vector product exp_0(W log_0 x) (geoopt's
    ``mobius_matvec``), then Möbius addition of the bias point exp_0(b); a Möbius SiLU
    exp_0(silu(log_0 x)) sits between layers. With c = 0 every operation is its Euclidean
    counterpart, so this is exactly the Euclidean MLP there. Weights are plain ``nn.Linear``s
    (the bias lives in the tangent space at the origin), trained by any optimizer."""

    def __init__(self, ball: geoopt.PoincareBall, widths: list[int]) -> None:
        super().__init__()
        self._ball = (ball,)  # not a submodule: the quantizer owns (and saves) the ball
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Ball points (N, w_k) of ball points x (N, w_0)."""
        ball = self._ball[0]
        for i, linear in enumerate(self.linears):
            x = project(ball, ball.mobius_matvec(linear.weight, x))
            x = mobius_add(ball, x, ball.expmap0(linear.bias))
            if i < len(self.linears) - 1:
                x = project(ball, ball.expmap0(F.silu(ball.logmap0(x))))
        return x
