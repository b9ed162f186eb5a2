"""Run `semid serve` (semid.cli.serve.run) on a FakePredictor in this process; for test_serving.py.

Usage: python tests/_serve_fake.py PORT DELAY_S [SERVE FLAGS...]
``semid.tasks.load_predictor`` is replaced by one returning a FakePredictor whose predict calls
announce themselves on stdout ("predict N (torch threads T)" for N inputs), so the test can signal
the process while a request is in flight. Once `run` returns, prints its exit code, whether the
batching thread is still alive and the child processes left.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

import semid.tasks
from semid.cli import serve as serve_cmd
from semid.fake_predictor import FakePredictor


class AnnouncingPredictor(FakePredictor):
    """FakePredictor that says on stdout when each predict call starts, with its torch threads.
    With ``SEMID_FAKE_BUSY=1`` it spends its delay computing in torch instead of sleeping, as a
    real model does (a thread inside a torch op when the interpreter exits aborts it)."""

    def __init__(self, delay_s: float) -> None:
        self.busy_s = delay_s if os.environ.get("SEMID_FAKE_BUSY") == "1" else 0.0
        super().__init__(delay_s=delay_s - self.busy_s)

    def predict(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """FakePredictor.predict, announced first."""
        print(f"predict {len(inputs)} (torch threads {torch.get_num_threads()})", flush=True)
        end, x = time.monotonic() + self.busy_s, torch.randn(256, 256)
        while time.monotonic() < end:
            x = torch.nn.functional.normalize(x @ x, dim=1)
        return super().predict(inputs, k, num_beams)


class FakeLoader:
    """Stands in for ``semid.tasks.load_predictor``; picklable, for the model process."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, run_dir: Path, device: str) -> AnnouncingPredictor:
        """An AnnouncingPredictor whatever the run."""
        return AnnouncingPredictor(delay_s=self.delay)


def main() -> None:
    """Parse `semid serve` arguments, serve until SIGINT/SIGTERM, report on stdout."""
    port, delay, *extra = sys.argv[1:]
    semid.tasks.load_predictor = FakeLoader(float(delay))  # stands in for the task layer
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    with tempfile.TemporaryDirectory() as run:  # a manifest alone: the loader is fake
        (Path(run) / "manifest.json").write_text(
            '{"format_version": 1, "task": "recommend", "parts": {}}'
        )
        args = [run, "--port", port, "--device", "cpu", "--threads", "2", *extra]
        code = serve_cmd.run(parser.parse_args(args))
    alive = any(t.name == "semid-batcher" for t in threading.enumerate())
    print(f"run returned {code}; batcher alive: {alive}", flush=True)
    children = [p.name for p in multiprocessing.active_children()]
    print(f"child processes: {children}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
