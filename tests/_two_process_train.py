"""A tiny classifier trained by `Trainer`; run directly or under `accelerate launch` by test_training.py.

Usage: python tests/_two_process_train.py OUT --batch-size 16
       accelerate launch --cpu --num_processes 2 tests/_two_process_train.py OUT --batch-size 8
Each process writes its final weights to OUT/rank{process_index}.safetensors. `--evaluate` scores
held-out accuracy after each epoch (on the main process); `--crash-at-evaluation N` makes the N-th
evaluation fail, as a killed job would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from semid.distributed import MainProcessError, main_process_value
from semid.errors import SemidError
from semid.training import TrainConfig, Trainer


class SimulatedCrash(RuntimeError):
    """Raised by TinyClassifier to stand for a killed job."""


class TinyClassifier(nn.Module):
    """Linear-ReLU-dropout-linear classifier following the generator contract `model(batch) -> (loss, logits)`."""

    def __init__(self, dim: int = 6, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, classes)
        )
        self.crash_at_call: int | None = None  # simulate an interruption at the n-th forward call
        self.calls = 0
        self.first_seed: int | None = None  # the seed of this process's stream at its first call

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """batch["x"]: (B, dim) float, batch["y"]: (B,) int64 -> (scalar loss, (B, classes) logits)."""
        self.calls += 1
        if self.calls == 1:
            self.first_seed = torch.initial_seed()
        if self.crash_at_call is not None and self.calls == self.crash_at_call:
            raise SimulatedCrash(f"simulated interruption at forward call {self.calls}")
        logits = self.net(batch["x"])
        return F.cross_entropy(logits, batch["y"]), logits


def make_dataset(
    n: int, dim: int = 6, classes: int = 3, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """n synthetic examples (x drawn with `seed`) labelled by the argmax of one fixed linear map of x."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    true_map = torch.randn(dim, classes, generator=torch.Generator().manual_seed(12345))
    return [{"x": x[i], "y": y} for i, y in enumerate((x @ true_map).argmax(dim=1))]


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyClassifier:
    """A TinyClassifier whose initial weights depend only on `seed`."""
    torch.manual_seed(seed)
    return TinyClassifier(dropout=dropout)


def accuracy_of(
    data: list[dict[str, torch.Tensor]], crash_at: int | None = None
) -> Callable[[nn.Module], dict[str, float]]:
    """An `evaluate` callback: accuracy on `data`; its `crash_at`-th call raises SimulatedCrash."""
    calls = 0

    def evaluate(model: nn.Module) -> dict[str, float]:
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise SimulatedCrash(f"simulated interruption in evaluation {calls}")
        x, y = torch.stack([d["x"] for d in data]), torch.stack([d["y"] for d in data])
        return {"acc": (model.net(x).argmax(1) == y).float().mean().item()}

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True, help="per process")
    parser.add_argument("--evaluate", action="store_true", help="held-out accuracy per epoch")
    parser.add_argument("--crash-at-evaluation", type=int, help="the evaluation that fails")
    parser.add_argument("--ids-per-process", action="store_true",
                        help="each process stamps other IDs, as machines that built other IDs would")  # fmt: skip
    parser.add_argument("--shared-ids", action="store_true",
                        help="with --ids-per-process: every process takes the main process's IDs")  # fmt: skip
    args = parser.parse_args()
    config = TrainConfig(
        max_epochs=2, batch_size=args.batch_size, lr=0.05, checkpoint_every=3, mixed_precision="no",
        metric="acc", log_every=1,
    )  # fmt: skip
    evaluate = accuracy_of(make_dataset(30, seed=1), args.crash_at_evaluation)
    ids = f"ids of process {os.environ.get('RANK', '0')}" if args.ids_per_process else "ids"
    if args.shared_ids:
        ids = main_process_value(ids, "cpu")
    trainer = Trainer(make_model(), make_dataset(64), config, args.out / "run",
                      evaluate=evaluate if args.evaluate else None,
                      trained_on={"data": "tiny", "ids": ids})  # fmt: skip
    try:
        result = trainer.fit()
    except MainProcessError:  # told by the main process, as `semid` does
        sys.exit(2)
    except SemidError as e:
        sys.exit(f"semid: error: {e}")
    rank = trainer.accelerator.process_index
    weights = {
        k: v.contiguous()
        for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }
    save_file(weights, str(args.out / f"rank{rank}.safetensors"))
    (args.out / f"seed{rank}.txt").write_text(
        f"{trainer.accelerator.unwrap_model(trainer.model).first_seed}\n"
    )
    print(f"rank {rank}: {result.steps} steps, {trainer.accelerator.num_processes} process(es)")


if __name__ == "__main__":
    main()
