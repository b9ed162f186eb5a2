"""`semid serve`: the real uvicorn server on loopback with a fake predictor, called over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import FailingPredictor

import semid.tasks
from semid import serving
from semid.cli import serve as serve_cmd
from semid.defaults import usable_cores
from semid.errors import RunDataError, SemidError
from semid.fake_predictor import FakePredictor
from semid.serving import (
    Answers,
    BatchingPredictor,
    answers_unless_gone,
    bind_socket,
    create_app,
    default_threads,
    default_workers,
    parse_request,
    routes,
    serve,
)

HELPER = Path(__file__).parent / "_serve_fake.py"


def wait_until(condition, timeout: float = 20.0) -> bool:
    """Poll ``condition`` every 10 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


class LiveServer:
    """uvicorn serving create_app(predictor) on 127.0.0.1, a free port, in a background thread."""

    def __init__(self, predictor: FakePredictor, **kwargs) -> None:
        self.app = create_app(predictor, **kwargs)
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        assert wait_until(lambda: self.server.started or not self.thread.is_alive())
        assert self.server.started, "uvicorn did not start"

    def stop(self) -> None:
        """What uvicorn's SIGINT/SIGTERM handler does: ask it to exit, then wait."""
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def live():
    predictor = FakePredictor(delay_s=0.05)
    server = LiveServer(predictor, max_batch=64, max_wait_ms=30)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, predictor, client
    server.stop()


def test_health_and_info(live):
    _, _, client = live
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["task"] == "recommend" and info["index_size"] == 100
    assert info["default_k"] == 10 and info["max_k"] == 100  # what a body's "k" may be
    assert info["semid_version"] and info["torch_version"]
    assert info["batching"]["max_batch"] == 64 and info["batching"]["workers"] == 1
    assert info["model_process"] is False  # this server predicts in its own process


def test_a_body_without_k_gets_ten_answers_or_the_whole_smaller_catalogue():
    """A collection of 6 items (a first try with a few photos) answered a body without "k" with
    'k=10 is larger than the catalogue'."""
    for size, expected in ((100, 10), (6, 6)):
        server = LiveServer(FakePredictor(num_items=size), max_batch=8, max_wait_ms=5)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/info").json()["default_k"] == expected
            got = client.post("/predict", json={"users": ["u1"]})
            assert got.status_code == 200 and len(got.json()["results"][0]["keys"]) == expected
            too_many = client.post("/predict", json={"users": ["u1"], "k": size + 1})
            assert too_many.status_code == 400 and "larger than the catalogue" in too_many.text
        server.stop()


def test_predict_single_and_many(live):
    _, _, client = live
    oracle = FakePredictor()
    one = client.post("/predict", json={"users": ["u3"], "k": 5})
    assert one.status_code == 200
    assert one.json() == {"results": oracle.predict([{"user": "u3"}], 5)}
    assert len(one.json()["results"][0]["keys"]) == 5

    many = client.post(
        "/predict", json={"histories": [["item001"], ["item002", "item007"]], "num_beams": 40}
    )
    inputs = [{"history": ["item001"]}, {"history": ["item002", "item007"]}]
    assert many.json() == {"results": oracle.predict(inputs, 10, 40)}  # default k is 10

    mixed = [{"query": "red shoes"}, {"user": "u0"}]
    answer = client.post("/predict", json={"inputs": mixed, "k": 3}).json()["results"]
    assert [a["input"] for a in answer] == mixed
    assert answer == oracle.predict(mixed, 3)
    assert client.post("/predict", json={"queries": ["a", "b"], "k": 2}).status_code == 200


BAD = {
    "malformed JSON": b'{"users": [',
    "not UTF-8": b"\xff\xfe\xfd",
    "not an object": b'["u1"]',
    "no input field": b'{"k": 5}',
    "two input fields": b'{"users": ["u1"], "queries": ["x"]}',
    "unknown field": b'{"user": ["u1"]}',
    "users not a list": b'{"users": "u1"}',
    "user of wrong type": b'{"users": [{"id": 1}]}',
    "history not a list": b'{"histories": ["item001"]}',
    "query not a string": b'{"queries": [3]}',
    "input not an object": b'{"inputs": ["u1"]}',
    "empty list": b'{"users": []}',
    "empty query": b'{"queries": ["  "]}',
    "unknown user": b'{"users": ["u1", "nobody"]}',
    "unknown item key": b'{"histories": [["item001", "item999"]]}',
    "unknown input kind": b'{"inputs": [{"image": "x"}]}',
    "k = 0": b'{"users": ["u1"], "k": 0}',
    "k < 0": b'{"users": ["u1"], "k": -3}',
    "k not an integer": b'{"users": ["u1"], "k": 2.5}',
    "k a string": b'{"users": ["u1"], "k": "5"}',
    "k a boolean": b'{"users": ["u1"], "k": true}',
    "k null": b'{"users": ["u1"], "k": null}',
    "k over the catalogue": b'{"users": ["u1"], "k": 101}',
    "num_beams < k": b'{"users": ["u1"], "k": 10, "num_beams": 5}',
    "num_beams a string": b'{"users": ["u1"], "num_beams": "x"}',
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_bad_requests_answer_4xx_with_one_line(live, body):
    _, _, client = live
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error


def test_unknown_route_and_method_answer_json(live):
    _, _, client = live
    assert client.get("/nowhere").status_code == 404
    assert "error" in client.get("/nowhere").json()
    assert client.get("/predict").status_code == 405
    routes = (
        'the server answers POST /predict (a JSON body such as {"users": [...], "k": 10}), GET '
        "/health and GET /info"
    )
    assert client.get("/predict").json()["error"] == f"GET /predict is not served; {routes}"
    assert client.post("/health").json()["error"] == f"POST /health is not served; {routes}"
    assert client.get("/").json()["error"] == f"GET / is not served; {routes}"
    # pages the docs do not name are not served (FastAPI's defaults, with assets from a CDN)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path
    # load balancers check health with HEAD
    assert client.head("/health").status_code == 200 and client.head("/info").status_code == 200


def test_the_routes_example_names_a_field_the_run_takes(live):
    assert '{"queries": [...], "k": 10}' in routes(["queries", "inputs"])  # it said "users" always
    assert '{"inputs": [...], "k": 10}' in routes(None)
    _, _, client = live
    r = client.post("/predict", content=b" \n")
    assert r.status_code == 400  # it said "not valid JSON: Expecting value: line 1 column 1"
    assert r.json()["error"] == 'the body is empty; send a JSON object such as {"users": [...]}'


def test_a_field_named_twice_is_refused(live):
    """JSON keeps the last of two fields of one name: {"users": [a], "users": [b]} answered b
    alone, the client's bug unseen."""
    _, _, client = live
    for body in (b'{"users": ["u1"], "users": ["u2"], "k": 1}',
                 b'{"inputs": [{"user": "u1", "user": "u2"}]}'):  # fmt: skip
        r = client.post("/predict", content=body)
        assert r.status_code == 400
        assert r.json()["error"].startswith('the body names the field "user')
    assert client.post("/predict", content=b'{"users": ["u1"], "k": 1}').status_code == 200


def test_a_body_over_the_limit_is_refused_unread_and_the_server_goes_on():
    """One client must not make the server hold any amount of memory: a body over the limit is
    answered 413 from its Content-Length, or once a chunked one has passed the limit."""
    server = LiveServer(FakePredictor(), max_body_bytes=1000)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            big = {"users": ["u1"] * 300}  # about 2 kB
            r = client.post("/predict", json=big)
            assert r.status_code == 413 and "larger than 1,000 bytes" in r.json()["error"]
            chunked = client.post(
                "/predict", content=iter([b'{"users": [', b'"u1", ' * 300, b'"u1"]}'])
            )
            assert chunked.status_code == 413 and "error" in chunked.json()
            assert client.post("/predict", json={"users": ["u1"] * 10}).status_code == 200
    finally:
        server.stop()


def test_bad_input_does_not_fail_batched_neighbours(live):
    _, _, client = live
    bodies = [{"users": ["u1"]}, {"users": ["nobody"]}, {"users": ["u2"]}] * 4
    with ThreadPoolExecutor(len(bodies)) as pool:
        codes = list(pool.map(lambda b: client.post("/predict", json=b).status_code, bodies))
    assert codes == [200, 400, 200] * 4


def test_concurrent_requests_are_batched_and_answered_as_alone(live):
    server, predictor, client = live
    oracle = FakePredictor()
    # different (k, num_beams) must not share a predict call: beam search is not prefix-stable
    settings = [(5, None), (10, None), (5, 30), (30, None)]
    requests = [
        ({"user": f"u{i}"} if i % 2 else {"history": [f"item{i:03d}"]}, *settings[i % 4])
        for i in range(32)
    ]
    expected = [oracle.predict([x], k, nb)[0] for x, k, nb in requests]
    assert any(  # the fake's answers do depend on (k, num_beams), so grouping is tested
        oracle.predict([x], 30)[0]["keys"][:5] != oracle.predict([x], 5)[0]["keys"]
        for x, _, _ in requests
    )
    calls_before = len(predictor.calls)
    start = threading.Barrier(32, timeout=20)

    def call(req):
        x, k, nb = req
        start.wait()
        r = client.post("/predict", json={"inputs": [x], "k": k, "num_beams": nb})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, requests))
    assert answers == expected
    calls = predictor.calls[calls_before:]
    assert sum(n for n, _, _ in calls) == 32
    assert len(calls) < 32, f"no batching: {len(calls)} predict calls for 32 requests"
    assert max(n for n, _, _ in calls) > 1


def test_batching_predictor_groups_and_chunks():
    predictor = FakePredictor()
    batcher = BatchingPredictor(predictor, max_batch=8, max_wait_ms=500)
    requests = [(3, 5), (3, 6), (3, 5), (9, 5)]  # (inputs, k)
    futures = [batcher.submit([{"user": f"u{i}"}] * n, k=k) for i, (n, k) in enumerate(requests)]
    answers = [f.result(timeout=20) for f in futures]
    batcher.close(timeout=20)
    assert not batcher.running
    for i, ((n, k), answer) in enumerate(zip(requests, answers, strict=True)):
        assert answer == FakePredictor().predict([{"user": f"u{i}"}] * n, k)
    # the first three requests reach max_batch (9 >= 8) and form one batch: one call per k;
    # the fourth is alone, in chunks of at most max_batch inputs
    assert predictor.calls == [(6, 5, None), (3, 6, None), (8, 5, None), (1, 5, None)]
    assert batcher.stats["batches"] == 2 and batcher.stats["requests"] == 4
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit([{"user": "u1"}], k=5)


def test_requests_that_waited_while_the_worker_was_busy_run_at_once():
    """The wait counts from queueing: requests queued longer than max_wait ago (during the previous
    batch) are all taken without waiting again, so a busy server does not idle between batches."""
    from semid.serving import _Request

    batcher = BatchingPredictor(FakePredictor(), max_batch=8, max_wait_ms=20_000)
    old = [_Request([{"user": f"u{i}"}], 5, None) for i in range(4)]
    for r in old:
        r.queued_at -= 30.0  # queued 30 s ago, beyond max_wait
    for r in old[1:]:
        batcher._queue.put(r)
    started = time.monotonic()
    batch, stop = batcher._gather(old[0])
    assert time.monotonic() - started < 10.0  # not another 20 s of waiting
    assert batch == old and not stop


def test_a_failing_predict_call_fails_only_its_group_and_the_worker_survives():
    batcher = BatchingPredictor(FailingPredictor(), max_batch=8, max_wait_ms=200)
    bad = batcher.submit([{"user": "u1"}], k=7)
    good = batcher.submit([{"user": "u2"}], k=5)
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(timeout=20)
    assert good.result(timeout=20) == FakePredictor().predict([{"user": "u2"}], 5)
    assert batcher.predict([{"user": "u3"}], 4) == FakePredictor().predict([{"user": "u3"}], 4)
    batcher.close(timeout=20)
    assert not batcher.running


def test_batching_predictor_rejects_bad_settings_and_input():
    with pytest.raises(SemidError, match="max-batch"):
        BatchingPredictor(FakePredictor(), max_batch=0)
    for bad in (-1, float("nan"), float("inf")):  # nan and inf would wait forever
        with pytest.raises(SemidError, match="max-wait-ms"):
            BatchingPredictor(FakePredictor(), max_wait_ms=bad)
    batcher = BatchingPredictor(FakePredictor())
    with pytest.raises(SemidError, match=r"users\[1\]: unknown user"):
        batcher.validate([{"user": "u1"}, {"user": "x"}], 5, field="users")
    assert not batcher.running  # validation alone starts no thread
    with pytest.raises(SemidError, match="exactly one of"):
        parse_request({"users": ["u1"], "inputs": []})
    # values are named as the client wrote them in JSON
    with pytest.raises(SemidError, match="users must be a list, got null$"):
        parse_request({"users": None})
    with pytest.raises(SemidError, match=r"users\[0\] must be a string or integer, got true$"):
        parse_request({"users": [True]})
    for k, shown in ((None, "null"), (True, "true"), ("2", '"2"')):
        with pytest.raises(SemidError, match=f"k must be an integer >= 1, got {shown}$"):
            batcher.validate([{"user": "u1"}], k)
    max_k = batcher.predictor.max_k()  # refused before any input is checked or batched
    with pytest.raises(SemidError, match=rf"k={max_k + 1} is larger than the catalogue \({max_k} "):
        batcher.validate([{"user": "u1"}], max_k + 1)


@pytest.mark.parametrize(
    ("body", "fix"),
    [
        ({"user": "196", "k": 3}, '{"users": ["196"], "k": 3}'),
        ({"query": "red fox"}, '{"queries": ["red fox"]}'),  # no k given: none suggested
        ({"history": ["i1", "i2"], "k": 2}, '{"histories": [["i1", "i2"]], "k": 2}'),
        ({"user": ["u1", "u2"]}, '{"users": ["u1", "u2"]}'),  # already a list: not wrapped again
    ],
)
def test_a_single_input_as_the_cli_takes_it_is_answered_with_the_list_to_send(body, fix):
    with pytest.raises(SemidError) as caught:
        parse_request(body)
    assert str(caught.value).endswith(f"/predict takes lists, as {fix}")


def test_bind_socket_names_a_taken_port():
    taken = bind_socket("127.0.0.1", 0)
    taken.listen()
    try:
        with pytest.raises(SemidError, match="another --port"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_server_survives_a_predictor_bug_and_stops_cleanly():
    server = LiveServer(FailingPredictor(), max_wait_ms=1)
    batcher = server.app.state.batcher
    with httpx.Client(base_url=server.url, timeout=10) as client:
        broken = client.post("/predict", json={"users": ["u1"], "k": 7})
        assert broken.status_code == 500 and "boom" in broken.json()["error"]
        assert client.post("/predict", json={"users": ["u1"]}).status_code == 200
    assert batcher.running
    server.stop()
    assert not server.thread.is_alive()
    assert not batcher.running
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=2) as client:
        client.get(server.url + "/health")


class UnreadableLogPredictor(FakePredictor):
    """A fake recommender whose data log cannot be read: users fail, histories are answered."""

    def check_input(self, item):
        if isinstance(item, dict) and "user" in item:
            raise RunDataError("interactions.csv has no user column; name it with --columns")
        return super().check_input(item)


def test_a_run_whose_data_cannot_be_read_answers_503_not_400():
    """The request is fine and the server's files are not: 503, so a client retries or alerts
    instead of fixing a request that was right; histories are still answered."""
    server = LiveServer(UnreadableLogPredictor(), max_wait_ms=1)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            users = client.post("/predict", json={"users": ["u1"]})
            assert users.status_code == 503
            assert users.json()["error"] == ("the server cannot read its run's data: users[0]: "
                                             "interactions.csv has no user column; name it with --columns")  # fmt: skip
            assert client.post("/predict", json={"histories": [["item001"]]}).status_code == 200
    finally:
        server.stop()


class SeenMostPredictor(FakePredictor):
    """A fake recommender whose user u0 has seen all but 3 items: it gets at most 3 answers."""

    def predict(self, inputs, k, num_beams=None):
        answers = super().predict(inputs, k, num_beams)
        for answer in answers:
            if answer["input"] == {"user": "u0"}:
                answer.update(
                    {name: values[:3] for name, values in answer.items() if name != "input"}
                )
        return answers


def test_fewer_answers_than_k_come_with_a_note_saying_why():
    server = LiveServer(SeenMostPredictor(), max_wait_ms=1)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        short = client.post("/predict", json={"users": ["u0", "u1"], "k": 5}).json()
        assert [len(a["keys"]) for a in short["results"]] == [3, 5]
        assert short["note"] == (
            "1 input of 2 got fewer than 5 answers (as few as 3): the catalogue has 100 items, "
            "and a user's history is never recommended back"
        )
        assert "note" not in client.post("/predict", json={"users": ["u1"], "k": 5}).json()
        assert "note" not in client.post("/predict", json={"users": ["u0"], "k": 3}).json()
    server.stop()


def test_texts_are_refused_for_a_run_without_them_and_must_be_a_boolean():
    server = LiveServer(FakePredictor(), max_wait_ms=1)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for texts, message in ((True, "has no item texts"), ("yes", "texts must be true or false")):
            got = client.post("/predict", json={"users": ["u1"], "texts": texts})
            assert got.status_code == 400 and message in got.json()["error"]
        plain = client.post("/predict", json={"users": ["u1"], "texts": False})
        assert plain.status_code == 200 and "texts" not in plain.json()["results"][0]
    server.stop()


def test_device_flag():
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    args = parser.parse_args(["runs/x", "--device", "cuda:1", "--max-batch", "8"])
    assert (args.device, args.max_batch, args.port, args.host) == ("cuda:1", 8, 8000, "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["runs/x", "--device", "gpu"])
    with pytest.raises(SemidError, match="--threads must be >= 1"):
        serve_cmd.run(parser.parse_args(["runs/x", "--threads", "0"]))
    with pytest.raises(SemidError, match="--workers must be >= 1"):
        serve_cmd.run(parser.parse_args(["runs/x", "--workers", "0"]))
    with pytest.raises(SemidError, match="drop --in-process"):
        serve_cmd.run(parser.parse_args(["runs/x", "--workers", "2", "--in-process"]))


def test_default_workers_one_per_core_up_to_four_and_one_on_a_gpu(monkeypatch):
    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(serving, "usable_cores", lambda cores=cores: cores)
        assert default_workers("cpu") == expected
        assert default_workers("cuda:0") == 1
    monkeypatch.setattr(serving, "usable_cores", lambda: 16)
    assert default_threads(4) == 3 and default_threads(1) == 15
    monkeypatch.setattr(serving, "usable_cores", lambda: 2)
    assert default_threads(2) == 1 and default_threads(1) == 1


def test_usable_cores_follow_the_cpu_affinity_not_the_machine(monkeypatch):
    """A container or taskset may allow fewer cores than the machine has: the defaults and the
    --workers/--threads cap count those."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 2
    assert default_workers("cpu") == 2 and default_threads(1) == 1


def test_batches_spread_over_replicas_and_answer_as_one_predictor():
    """Two replicas: a batch goes to whichever is free, so both predict; answers are unchanged."""
    first, second = FakePredictor(delay_s=0.05), FakePredictor(delay_s=0.05)
    batcher = BatchingPredictor(first, max_batch=4, max_wait_ms=1, replicas=[second])
    try:
        inputs = [{"user": f"u{i}"} for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda x: batcher.predict([x], 4), inputs))
        assert [a[0] for a in answers] == FakePredictor().predict(inputs, 4)
        assert first.calls and second.calls
        assert sum(n for n, _, _ in first.calls + second.calls) == 16
        assert batcher.stats["requests"] == 16
    finally:
        batcher.close()
    assert not batcher.running


@pytest.mark.parametrize(
    "flags", [["--workers", "1"], ["--workers", "2"], ["--in-process"]],
    ids=["model-process", "two-model-processes", "in-process"],
)  # fmt: skip
def test_sigterm_finishes_in_flight_request_then_exits(flags):
    """`semid serve` (its run function, on a fake task layer) in a subprocess, stopped by SIGTERM."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    with fake_serve(str(port), "1.0", *flags) as proc:
        with httpx.Client(base_url=url, timeout=30) as client:

            def healthy() -> bool:
                try:
                    return client.get("/health").status_code == 200
                except httpx.TransportError:
                    return proc.poll() is not None

            assert wait_until(healthy, timeout=60) and proc.poll() is None, proc.stderr.read()
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.post, "/predict", json={"users": ["u1"], "k": 3})
                for _ in range(5):  # skip the "serving ..." banner
                    ready, _, _ = select.select([proc.stdout], [], [], 30)
                    assert ready, "no predict call within 30 s"
                    announced = proc.stdout.readline().strip()
                    if announced.startswith("predict 1 "):
                        break
                proc.send_signal(signal.SIGTERM)  # while the 1 s predict call is running
                response = pending.result(timeout=30)
        assert response.status_code == 200
        assert response.json() == {"results": FakePredictor().predict([{"user": "u1"}], 3)}
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "semid serve: stopped" in out
        assert "run returned 0; batcher alive: False" in out
        assert announced == "predict 1 (torch threads 2)"  # --threads reached the model
        assert "child processes: []" in out
        assert "Traceback" not in err
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=2) as client:
        client.get(url + "/health")


def test_a_stalled_client_cannot_keep_the_server_up():
    """A client that sent headers and half its body, then stalls, is answered 503 and closed after
    --shutdown-timeout once SIGTERM comes; the server stops cleanly (without the timeout uvicorn
    waited for that client for good)."""
    with fake_serve("0", "0", "--shutdown-timeout", "1") as proc:
        port = _bannered_port(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
            stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                            b"\r\nContent-Length: 100\r\n\r\n{\"users\": ")  # fmt: skip
            time.sleep(0.5)  # the server has read the headers
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
            reply = stalled.recv(4096)  # told why, not just cut off
        assert reply.startswith(b"HTTP/1.1 503 ") and b"the server is shutting down" in reply
        assert proc.returncode == 0, err
        assert "semid serve: stopped" in out
        assert "Traceback" not in err


@pytest.mark.parametrize(
    "stop, flags, pause",
    [
        (signal.SIGINT, [], 0.3),  # while uvicorn waits for the open request
        (signal.SIGTERM, [], 0.3),
        (signal.SIGINT, ["--shutdown-timeout", "1"], 2.5),  # the request answered 503 at 1 s;
        (signal.SIGINT, ["--in-process", "--shutdown-timeout", "1"], 2.5),  # the app waits
        (signal.SIGINT, ["--in-process"], 0.3),  # the batch computing in torch, in this process
    ],
    ids=["ctrl-c", "sigterm", "after-timeout", "in-process-after-timeout", "in-process-busy"],
)  # fmt: skip
def test_a_second_signal_stops_at_once_with_one_line(stop, flags, pause, monkeypatch):
    """Ctrl-C pressed again while a graceful stop waits for a 20 s request (for its answer, or,
    once --shutdown-timeout answered it 503, for its batch): the server stops at once, says so in
    one line, stops its workers and exits 0. Before, uvicorn's re-raised second signal broke into
    the event loop's teardown (a traceback), and the stop waited for the batch. The model spends
    its time in torch: an interpreter that exits under a thread inside a torch op aborts."""
    monkeypatch.setenv("SEMID_FAKE_BUSY", "1")
    with fake_serve("0", "20", *flags) as proc:
        port = _bannered_port(proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.post, "/predict", json={"users": ["u1"], "k": 3})
                ready, _, _ = select.select([proc.stdout], [], [], 30)
                assert ready and proc.stdout.readline().startswith("predict 1 ")
                proc.send_signal(stop)
                time.sleep(pause)
                forced = time.monotonic()
                proc.send_signal(stop)
                out, err = proc.communicate(timeout=30)
                stopped = time.monotonic() - forced
                response = pending.result(timeout=30)
    assert stopped < 5, stopped  # not after the 20 s batch, nor after uvicorn's timeout
    assert response.status_code == 503
    assert proc.returncode == 0, err
    *timed_out, told = err.strip().splitlines()
    assert told == "stopping now, without waiting for the requests in flight", err
    # uvicorn's own line, when the first stop's --shutdown-timeout ran out
    assert timed_out == ([] if pause < 1 else ["ERROR:    Cancel 1 running task(s), timeout "
                                               "graceful shutdown exceeded"]), err  # fmt: skip
    assert "semid serve: stopped" in out
    if "--in-process" not in flags:  # in process the batch still computes: it ends at once
        assert "run returned 0" in out and "child processes: []" in out


def test_shutdown_timeout_must_be_a_number_of_seconds(tmp_path):
    """A negative or infinite --shutdown-timeout is refused before the run loads."""
    (tmp_path / "manifest.json").write_text(
        '{"format_version": 1, "task": "recommend", "parts": {}}'
    )
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    for value in ("-1", "inf"):
        with pytest.raises(SemidError, match="--shutdown-timeout must be a finite number"):
            serve_cmd.run(parser.parse_args([str(tmp_path), "--shutdown-timeout", value]))


def test_the_banner_comes_when_the_port_answers():
    """`semid serve --port 0` names the port it got, and a client that connects as soon as the
    banner appears is answered, not refused (the socket listens before the banner)."""
    with fake_serve("0", "0") as proc:
        port = _bannered_port(proc)
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@contextlib.contextmanager
def fake_serve(*args: str) -> Iterator[subprocess.Popen]:
    """`semid serve` on a fake task layer in a subprocess (tests/_serve_fake.py ``args``), killed
    at the end if the test left it running."""
    proc = subprocess.Popen([sys.executable, str(HELPER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _bannered_port(proc: subprocess.Popen) -> int:
    """The port named by the "serving ..." banner of a `semid serve` subprocess."""
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "no banner within 60 s"
    banner = proc.stdout.readline()
    assert banner.startswith("serving "), banner + proc.stderr.read()
    return int(re.search(r"http://127\.0\.0\.1:(\d+) ", banner).group(1))


def test_a_taken_port_is_told_before_the_run_loads(tmp_path, monkeypatch):
    """Loading a large run takes seconds; a port already served is named before that, and a
    port bound (not yet listened on) by a loading server is refused to a second one at its
    listen."""
    loads = []
    monkeypatch.setattr(semid.tasks, "load_predictor", lambda *a, **k: loads.append(a) or 1 / 0)
    (tmp_path / "manifest.json").write_text(
        '{"format_version": 1, "task": "recommend", "parts": {}}'
    )
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    taken = bind_socket("127.0.0.1", 0)
    try:
        taken.listen()
        port = str(taken.getsockname()[1])
        with pytest.raises(
            SemidError, match=f"cannot listen on 127.0.0.1:{port}: .*another --port"
        ):
            serve_cmd.run(parser.parse_args([str(tmp_path), "--port", port]))
        assert loads == []
    finally:
        taken.close()
    first, second = bind_socket("127.0.0.1", 0), None
    try:
        second = bind_socket("127.0.0.1", first.getsockname()[1])  # address reuse lets both bind
        first.listen()
        with pytest.raises(SemidError, match="another --port"):
            serve(FakePredictor(), sock=second)
        assert second.fileno() == -1  # closed
    finally:
        first.close()


def test_more_workers_than_cores_are_cut_to_the_cores_with_a_note(monkeypatch, capsys):
    """A deployment's fixed --workers on a smaller machine still starts (1000 model copies would
    not), told on stderr."""
    import os

    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    args = parser.parse_args(["runs/x", "--workers", "1000"])
    # runs/x: no run; the flags pass first
    with pytest.raises(SemidError, match="runs/x not found"):
        serve_cmd.run(args)
    assert (
        f"--workers 1000 is more than this machine's {cores} usable cores; using {cores}"
        in capsys.readouterr().err
    )
    assert args.workers == cores


def test_a_client_that_hangs_up_mid_body_is_no_server_error(live):
    server, _, client = live
    port = int(server.url.rsplit(":", 1)[1])
    errors = logging.Handler(logging.ERROR)  # uvicorn's loggers do not propagate to caplog's
    errors.emit = lambda record: logged.append(record.getMessage())
    logged: list[str] = []
    logging.getLogger("uvicorn.error").addHandler(errors)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b'Content-Length: 1000\r\n\r\n{"users": [')  # fmt: skip
            time.sleep(0.2)
        time.sleep(0.3)
        assert client.post("/predict", json={"users": ["u3"], "k": 2}).status_code == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(errors)
    assert not [m for m in logged if "Exception in ASGI application" in m]


def test_a_request_whose_client_left_is_dropped_from_the_queue():
    class Gone:
        async def is_disconnected(self) -> bool:
            return True

    never = Answers()  # queued behind other work: not answered yet
    assert asyncio.run(answers_unless_gone(Gone(), never)) is None
    assert never.cancelled()  # a worker skips it (set_running_or_notify_cancel)
    running = Answers()
    assert running.set_running_or_notify_cancel()
    assert asyncio.run(answers_unless_gone(Gone(), running)) is None
    assert running.abandoned.is_set() and not running.cancelled()  # its batch drops the rest
    done = Answers()
    done.set_result([{"keys": ["a"]}])
    assert asyncio.run(answers_unless_gone(Gone(), done)) == [{"keys": ["a"]}]


def test_an_abandoned_request_stops_between_chunks_and_others_are_answered():
    """A request whose client hung up while its batch runs is not computed past the chunk in
    flight (20,000 inputs were computed for nobody, holding the worker for minutes); the other
    requests of its batch are answered whole."""
    predictor = GatedPredictor()
    batcher = BatchingPredictor(predictor, max_batch=4, max_wait_ms=200, max_inputs=100)
    try:
        big = batcher.submit([{"user": f"u{i % 10}"} for i in range(40)], 2)
        small = batcher.submit([{"user": "u1"}, {"user": "u2"}], 2)
        assert predictor.entered.wait(30)  # the first chunk is being computed
        big.abandon()
        predictor.released.set()
        answers = small.result(30)
        assert [a["input"] for a in answers] == [{"user": "u1"}, {"user": "u2"}]
        assert len(big.result(30)) == 4  # the chunk in flight, then no more
        assert [n for n, *_ in predictor.calls] == [4, 2]
        assert batcher.stats["requests"] == 1 and batcher.stats["inputs"] == 2
    finally:
        predictor.released.set()
        batcher.close(30)


class GatedPredictor(FakePredictor):
    """A FakePredictor whose predict waits until ``released`` (a batch in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.released = threading.Event(), threading.Event()

    def predict(self, inputs: list, k: int, num_beams: int | None = None) -> list:
        self.entered.set()
        assert self.released.wait(30), "the test never released the predict call"
        return super().predict(inputs, k, num_beams)


def test_a_request_over_max_inputs_is_refused_naming_the_cap():
    batcher = BatchingPredictor(FakePredictor(), max_inputs=3)
    try:
        with pytest.raises(SemidError, match=re.escape(
            "users holds 4 inputs; the server takes at most 3 a request (--max-inputs): send them "
            "in several requests, or answer a file of them with `semid predict`"
        )):  # fmt: skip
            batcher.submit([{"user": "u1"}] * 4, 2, field="users")
        assert len(batcher.submit([{"user": "u1"}] * 3, 2).result(30)) == 3
        with pytest.raises(SemidError, match="max_inputs .--max-inputs. must be an integer >= 1"):
            BatchingPredictor(FakePredictor(), max_inputs=0)
    finally:
        batcher.close(30)


class SlowCheckPredictor(FakePredictor):
    """A FakePredictor whose input check waits until ``released`` (as a run loaded again would)."""

    def __init__(self) -> None:
        super().__init__()
        self.checking, self.released = threading.Event(), threading.Event()

    def check_input(self, item: dict) -> dict:
        self.checking.set()
        assert self.released.wait(30), "the test never released the check"
        return super().check_input(item)


def test_a_slow_input_check_leaves_the_event_loop_free():
    """Checking inputs may load a changed run or log again (seconds): /health and /info answer
    while a request's check is still running."""
    predictor = SlowCheckPredictor()
    server = LiveServer(predictor)
    try:
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=10) as client:
            pending = pool.submit(client.post, "/predict", json={"users": ["u1"], "k": 2})
            assert predictor.checking.wait(10)
            assert client.get("/health").json() == {"status": "ok"}  # timed out if the loop waited
            assert client.get("/info").json()["max_k"] == 100
            predictor.released.set()
            assert pending.result(10).json()["results"][0]["keys"]
    finally:
        predictor.released.set()
        server.stop()


def test_the_announced_url_of_an_ipv6_host_has_brackets():
    """`semid serve RUN --host ::1` announced http://::1:8751, which no client can open."""
    from semid.cli.serve import url_host

    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1" and url_host("localhost") == "localhost"
