"""A served run that follows its folder: after `semid index add` (or a retrain) it is loaded again.

`semid serve` loads a run once. :class:`ReloadingPredictor` wraps the loading so that, before each
call, it compares the modification times of the run folder and of its ``index`` and ``model``
folders with those seen at the last load: every write to a run ends with an atomic rename inside one
of them, so a change shows there. A changed run is loaded again once its writer is done (while
another process holds the run's write lock, the loaded copy keeps answering), by one thread at a
time. Each model process and the server's own input checker hold one, so all of them follow the
same folder; a model process is sent the state the server's copy read with each batch, and loads it
if it has not (`ReloadingPredictor.catch_up`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from semid.errors import SemidError
from semid.locking import current_writer
from semid.notes import note
from semid.runs import run_stamp


class ReloadingPredictor:
    """A predictor (see `semid.serving.Predictor`) that loads ``run_dir`` again with ``load`` when
    the folder changed since its last load and no writer holds it."""

    def __init__(self, load: Callable[[], Any], run_dir: str | Path, announce: bool = True) -> None:
        self._load, self._run_dir, self._announce = load, Path(run_dir), announce
        self._stamp = run_stamp(self._run_dir)  # taken first: a change during the load shows later
        self._current = load()
        self._failed: tuple[int, ...] | None = None  # a state that did not load: not tried again
        self._failure = ""  # why it did not load
        self._loading = threading.Lock()  # held while a changed run loads

    @property
    def task(self) -> str:
        """The loaded run's task."""
        return self._current.task

    def current(self) -> Any:
        """The predictor of the run as it is now on disk (loaded again if it changed). Thread-safe:
        one thread loads a changed run while the others that saw the change wait for it."""
        if self._unchanged(run_stamp(self._run_dir)):
            return self._current
        with self._loading:
            stamp = run_stamp(self._run_dir)  # another thread may have loaded it meanwhile
            if self._unchanged(stamp):
                return self._current
            return self._load_changed(stamp)

    @property
    def stamp(self) -> tuple[int, ...]:
        """The run folder's `run_stamp` when the loaded copy was loaded."""
        return self._stamp

    def catch_up(self, stamp: tuple[int, ...]) -> None:
        """Load the run that another copy (the server's) loaded at ``stamp``, if this copy has
        not and the folder still stands there, also while a writer holds it (one that has written
        nothing yet). A model process that got no batch between two `semid index add` runs would
        otherwise answer from the copy before the first, whose index lacks what the server's copy
        accepted in the inputs."""
        if stamp == self._stamp:
            return
        with self._loading:
            if stamp not in (self._stamp, self._failed) and run_stamp(self._run_dir) == stamp:
                self._load_changed(stamp)

    def _unchanged(self, stamp: tuple[int, ...]) -> bool:
        """Whether the loaded copy stands for ``stamp``: loaded (or failed) at it, or mid-write."""
        return stamp in (self._stamp, self._failed) or current_writer(self._run_dir) is not None

    def _load_changed(self, stamp: tuple[int, ...]) -> Any:
        """Load the run again; a run that does not load leaves the copy loaded before."""
        try:
            fresh = self._load()
        except SemidError as e:  # a broken change: tried again once the folder changes again
            self._failed, self._failure = stamp, str(e)
            if self._announce:
                note(f"{self._run_dir} changed but did not load ({e}); serving the copy "
                     "loaded before", "serve")  # fmt: skip
            return self._current
        self._current, self._stamp = fresh, stamp
        if self._announce:
            note(f"{self._run_dir} changed on disk; loaded it again "
                 f"({fresh.info()['index_size']:,} indexed)", "serve")  # fmt: skip
        return fresh

    def info(self) -> dict[str, Any]:
        """The current run's info; while the folder stands in a state that did not load, with
        ``"stale"`` saying so (answers come from the copy loaded before)."""
        info = self.current().info()
        if self._failed is not None and self._failed == run_stamp(self._run_dir):
            info["stale"] = (f"{self._run_dir} changed but did not load ({self._failure}); "
                             "answers come from the copy loaded before")  # fmt: skip
        return info

    def max_k(self) -> int:
        """The current run's catalogue size."""
        return self.current().max_k()

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """Checked by the current run."""
        return self.current().check_input(item)

    def predict(
        self, inputs: list[dict[str, Any]], k: int | None = None, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """The current run's answers."""
        return self.current().predict(inputs, k, num_beams)

    def read_data(self) -> None:
        """The current run's data, read now."""
        self.current().read_data()

    def unsearched_note(self) -> str | None:
        """The current run's."""
        return self.current().unsearched_note()

    def resolve(self, checked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Resolved by the current run."""
        return self.current().resolve(checked)

    def predict_resolved(
        self, resolved: list[dict[str, Any]], k: int | None = None, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """The current run's answers for another copy's resolved inputs."""
        return self.current().predict_resolved(resolved, k, num_beams)

    def item_texts(self, keys: Sequence[str]) -> list[str] | None:
        """The current run's texts of these keys."""
        return self.current().item_texts(keys)


def follow_run(
    load_predictor: Callable[..., Any], run_dir: str | Path, device: str = "cpu",
    announce: bool = True,
) -> ReloadingPredictor:  # fmt: skip
    """``load_predictor(run_dir, device=device)`` (`semid.tasks.load_predictor`), loaded again
    whenever the run changes; module-level, so a model process can be given it in a partial.
    ``announce``: note each load after a change, and each change that did not load (the server's
    own copy does; its model processes, which load the same change, would repeat it)."""
    return ReloadingPredictor(partial(load_predictor, run_dir, device=device), run_dir, announce)
