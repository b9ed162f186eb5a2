"""ProcessPredictor: predict in a child process gives the in-process answers and errors."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from conftest import DyingPredictor, FailingPredictor

from semid.errors import SemidError
from semid.fake_predictor import FakePredictor
from semid.model_process import ModelProcessError, ProcessPredictor
from semid.serving import BatchingPredictor


class _SlowLoad:
    """A picklable loader that takes a while, as a large run does."""

    def __call__(self) -> FakePredictor:
        time.sleep(1.0)
        return FakePredictor()


class _BrokenLoad:
    """A picklable loader that fails, as a run that cannot be read would."""

    def __call__(self) -> FakePredictor:
        raise OSError("no such run")


@pytest.fixture(scope="module")
def remote():
    (predictor,) = ProcessPredictor.launch(FakePredictor(), partial(FakePredictor), threads=1)
    yield predictor
    predictor.close()


def test_answers_equal_in_process(remote):
    local = FakePredictor()
    inputs = [{"user": "u1"}, {"history": ["item003", "item007"]}, {"query": "x"}]
    assert remote.predict(inputs, 5) == local.predict(inputs, 5)
    assert remote.predict(inputs[:1], 3, num_beams=30) == local.predict(inputs[:1], 3, 30)
    assert (
        remote.info() == {**local.info(), "model_process": True} and remote.max_k() == local.max_k()
    )
    assert remote.task == local.task


def test_bad_request_raises_semid_error_and_process_survives(remote):
    with pytest.raises(SemidError, match="num_beams"):
        remote.predict([{"user": "u1"}], 10, num_beams=3)
    assert remote.predict([{"user": "u2"}], 2) == FakePredictor().predict([{"user": "u2"}], 2)


def test_checks_stay_local(remote):
    with pytest.raises(SemidError, match="unknown user"):
        remote.check_input({"user": "nobody"})


def test_batching_in_front_of_a_process_predictor(remote):
    batcher = BatchingPredictor(remote, max_batch=8, max_wait_ms=1)
    try:
        inputs = [{"user": f"u{i}"} for i in range(20)]
        assert batcher.predict(inputs, 4) == FakePredictor().predict(inputs, 4)
    finally:
        batcher.close()


def test_a_load_failure_is_one_clear_error():
    with pytest.raises(ModelProcessError, match="could not load the run: OSError: no such run"):
        ProcessPredictor.launch(FakePredictor(), _BrokenLoad(), threads=1, count=2)


def test_close_stops_the_process_and_is_idempotent():
    predictor = ProcessPredictor(FakePredictor(), partial(FakePredictor), threads=1)
    process = predictor._process
    predictor.close()
    predictor.close()
    assert not process.is_alive() and process.exitcode == 0


def test_a_predictor_bug_fails_the_call_and_the_process_survives():
    predictor = ProcessPredictor(FakePredictor(), partial(FailingPredictor), threads=1)
    try:
        with pytest.raises(RuntimeError, match="RuntimeError: boom"):
            predictor.predict([{"user": "u1"}], 7)
        assert predictor.predict([{"user": "u1"}], 3) == FakePredictor().predict(
            [{"user": "u1"}], 3
        )
    finally:
        predictor.close()


def test_a_dead_model_process_is_replaced_and_the_call_answered(capsys):
    (predictor,) = ProcessPredictor.launch(FakePredictor(), partial(FakePredictor), threads=1)
    try:
        first = predictor._process
        first.kill()  # between batches, as the out-of-memory killer would
        first.join()
        expected = FakePredictor().predict([{"user": "u1"}], 3)
        assert predictor.predict([{"user": "u1"}], 3) == expected
        assert predictor._process is not first and predictor._process.is_alive()
        assert (
            "a model process stopped (exit code -9); starting a new one" in capsys.readouterr().err
        )
    finally:
        predictor.close()


def test_a_batch_that_kills_its_process_twice_is_one_clear_error_and_the_next_is_answered():
    (predictor,) = ProcessPredictor.launch(FakePredictor(), partial(DyingPredictor), threads=1)
    try:
        with pytest.raises(ModelProcessError, match=r"the model process stopped \(exit code 137\)"):
            predictor.predict([{"user": "u1"}], 9)  # dies, and dies again on the retry
        assert predictor.predict([{"user": "u1"}], 3) == FakePredictor().predict(
            [{"user": "u1"}], 3
        )
    finally:
        predictor.close()


def test_threads_waiting_together_for_a_loading_process_each_get_its_info():
    """/info, predict and a restart may wait for the same child: one receives its report, the
    others see it (a second receiver would block, or later take a predict call's reply)."""
    predictor = ProcessPredictor(FakePredictor(), _SlowLoad(), threads=1)
    pool = ThreadPoolExecutor(3)
    try:
        waiting = [pool.submit(predictor.info) for _ in range(3)]
        infos = [w.result(timeout=30) for w in waiting]
        assert all(info["model_process"] for info in infos)
        expected = FakePredictor().predict([{"user": "u1"}], 3)
        assert predictor.predict([{"user": "u1"}], 3) == expected
    finally:
        predictor.close()  # ends a receive that would wait forever
        pool.shutdown()


def test_the_pipe_is_closed_only_once_no_call_reads_it():
    """A forced stop kills the child under a call in flight; the call then gets end-of-file and
    lets go of the pipe. `close` waits for that before closing the pipe: closed under the reading
    thread, its descriptor could be given to another file, which the thread would then read."""
    import threading

    (predictor,) = ProcessPredictor.launch(FakePredictor(), partial(FakePredictor), threads=1)
    held, release = threading.Event(), threading.Event()

    def in_flight() -> None:  # a call's hold of the pipe, as `predict` takes it
        with predictor._lock:
            held.set()
            release.wait(10)

    reader = threading.Thread(target=in_flight)
    reader.start()
    held.wait(10)
    predictor.kill()
    threading.Timer(0.5, release.set).start()
    closed_at = time.monotonic()
    predictor.close()
    assert time.monotonic() - closed_at >= 0.4  # waited for the call to let go
    assert predictor._conn.closed
    reader.join(10)
