"""Cross-entropy over every item of a catalogue without holding a rows x items matrix.

SASRec's loss and MMGRec's item head score each training position against every item. Done in
one piece, a step holds the (R, N) logits, their log-softmax and its gradient at once: at 3,200
positions and 30,000 items that is about 1.1 GB, and it grows with the catalogue. Past
:data:`LOGIT_CHUNK_FLOATS` logits, :func:`item_cross_entropy` scores the rows a chunk at a time and
works out the gradients of the hidden states and the item table in the same pass (the gradient of
a cross-entropy with respect to its logits is softmax minus one-hot, known once a chunk's logits
are), so nothing of a chunk outlives it and the backward pass only scales the two gradients. A step
then holds about one chunk at a time for the same arithmetic as the one-piece loss, and runs faster
where the one-piece tensors are large (fewer passes over memory: MovieLens-1M's 3,706 items,
1.3x a step at 2 threads, benchmarks/item_softmax.py). Smaller problems (ml-100k at 50-item
histories) take the one-piece path, bit for bit the loss they always had; the chunked loss agrees
with it to float rounding (its sums run in another order).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

LOGIT_CHUNK_FLOATS = 1 << 23  # 32 MiB of float32 logits per chunk


def item_cross_entropy(
    hidden: Tensor, table: Tensor, targets: Tensor, chunk_floats: int | None = None
) -> Tensor:
    """Mean cross-entropy of ``hidden @ table.T`` (R, N) against ``targets`` (R,) in ``[0, N)``,
    the logits made ``chunk_floats`` (default :data:`LOGIT_CHUNK_FLOATS`) at a time when R x N
    passes it (see the module docstring)."""
    chunk_floats = LOGIT_CHUNK_FLOATS if chunk_floats is None else chunk_floats
    rows, items = hidden.shape[0], table.shape[0]
    chunk_rows = max(1, chunk_floats // max(items, 1))
    if rows <= chunk_rows:
        return F.cross_entropy(hidden @ table.T, targets)
    return _ChunkedCrossEntropy.apply(hidden, table, targets, chunk_rows, torch.is_grad_enabled())


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy a chunk of rows at a time, its input gradients made in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        hidden: Tensor,
        table: Tensor,
        targets: Tensor,
        chunk_rows: int,
        grad_mode: bool,
    ) -> Tensor:
        rows = hidden.shape[0]
        # gradients only of the inputs that want one, and none in no_grad mode (an evaluation)
        hidden_grad, table_grad = (grad_mode and wanted for wanted in ctx.needs_input_grad[:2])
        # float32 at least (float64 inputs keep float64, as the one-piece loss does)
        work = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros((), dtype=work, device=hidden.device)
        grad_hidden = hidden.new_zeros(hidden.shape if hidden_grad else 0, dtype=work)
        grad_table = table.new_zeros(table.shape if table_grad else 0, dtype=work)
        # float16 autocast would round the gradients (probabilities of 1e-5 and less, at large
        # catalogues) before the loss scale reaches them: they are made in float32 then
        exact = _float16_autocast(hidden.device.type)
        for start in range(0, rows, chunk_rows):
            part, wanted = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = (part @ table.T).to(work)  # (C, N); matmul precision as autocast has it
            log_norm = torch.logsumexp(logits, dim=1)
            total += (log_norm - logits.gather(1, wanted[:, None])[:, 0]).sum()
            if not (hidden_grad or table_grad):
                continue
            grad_logits = logits.sub_(log_norm[:, None]).exp_()  # softmax, in the logits' memory
            grad_logits[torch.arange(len(wanted), device=wanted.device), wanted] -= 1
            with torch.autocast(hidden.device.type, enabled=False) if exact else nullcontext():
                if hidden_grad:
                    grad_hidden[start : start + chunk_rows] = _times(grad_logits, table, exact)
                if table_grad:
                    grad_table += _times(grad_logits.T, part, exact)
        ctx.save_for_backward(grad_hidden / rows, grad_table / rows)
        ctx.dtypes = hidden.dtype, table.dtype
        return total / rows

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_hidden, grad_table = ctx.saved_tensors
        hidden_dtype, table_dtype = ctx.dtypes
        hidden_grad, table_grad = ctx.needs_input_grad[:2]
        return (
            (grad_hidden * grad).to(hidden_dtype) if hidden_grad else None,
            (grad_table * grad).to(table_dtype) if table_grad else None,
            None,
            None,
            None,
        )


def _float16_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and (
        torch.get_autocast_dtype(device_type) == torch.float16
    )


def _times(grad_logits: Tensor, inputs: Tensor, exact: bool) -> Tensor:
    """``grad_logits @ inputs`` in ``grad_logits``' dtype (float32 or float64): computed in it
    when ``exact``, else in the inputs' dtype as autocast would (a no-op cast for float32 inputs)."""
    if exact:
        return grad_logits @ inputs.to(grad_logits.dtype)
    return (grad_logits.to(inputs.dtype) @ inputs).to(grad_logits.dtype)
