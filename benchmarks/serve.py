"""HTTP serving: requests/s and latency of `semid serve` (batched) vs one-at-a-time in-process predict.

For a run (or ``--fake``: the synthetic FakePredictor, whose predict sleeps --fake-delay-ms plus
--fake-per-input-ms per input to stand for a model forward):
  (a) baseline, in this process: ``predictor.predict([x], k)`` for each input, one after another,
      timed twice, before and after the HTTP timings; the faster pass is the baseline, so that a
      slow spell of a shared machine during one pass cannot flatter the ratios;
  (b) the same inputs as N single-input POST /predict requests to a `semid serve`-equivalent server
      in a subprocess (127.0.0.1), from an asyncio client (aiohttp, keep-alive connections) with
      --concurrency requests in flight (default 1, 8, 32). The client shares the machine's CPUs
      with the server, so it is kept light: one event loop, no threads.
Reports requests/s, p50/p99 latency, the mean inputs per predict call (from GET /info) and
``os.getloadavg()`` before and after every timing (the machine may be shared).
Run: python -m benchmarks.serve RUN [--device cuda] [--inputs FILE.jsonl]   (--inputs needed for
     retrieval and text-to-image runs)
     python -m benchmarks.serve --fake --out /tmp/serve-bench     (smoke run, a few seconds)
Inputs: --inputs (one JSON input per line, e.g. {"user": "42"} or {"query": "mount a disk"}), else
predictor.sample_inputs(n): users of a recommendation run's data, or the fake predictor's inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.error import URLError
from urllib.request import urlopen

import aiohttp
import numpy as np
import torch

from benchmarks.results_files import command_line, cpu_description, write_result
from semid import __version__
from semid.errors import SemidError
from semid.fake_predictor import FakePredictor
from semid.serving import Predictor, bind_socket, default_threads, default_workers
from semid.tasks import load_predictor, resolve_device

RESULTS = Path(__file__).parent / "results"

# The server process: what `semid serve RUN` runs, minus the CLI.
SERVER = """
import json, sys
from semid.serving import serve
spec = json.loads(sys.argv[1])
from functools import partial
if spec["fake"]:
    from semid.fake_predictor import FakePredictor
    load = partial(FakePredictor, delay_s=spec["delay_s"], per_input_s=spec["per_input_s"])
else:
    from semid.tasks import load_predictor
    load = partial(load_predictor, spec["run"], device=spec["device"])
serve(load(), host="127.0.0.1", port=spec["port"], max_batch=spec["max_batch"],
      max_wait_ms=spec["max_wait_ms"], threads=spec["threads"],
      load=load if spec["model_process"] else None, workers=spec["workers"])
"""


def load_predictor_for(args: argparse.Namespace) -> Predictor:
    """The in-process predictor for the baseline (and for sample inputs)."""
    if args.fake:
        return FakePredictor(
            delay_s=args.fake_delay_ms / 1e3, per_input_s=args.fake_per_input_ms / 1e3
        )
    return load_predictor(args.run, device=args.device)


def load_inputs(args: argparse.Namespace, predictor: Predictor) -> list[dict[str, Any]]:
    """--requests inputs: from --inputs (cycled), else the predictor's sample_inputs."""
    if args.inputs is not None:
        if not args.inputs.is_file():
            raise SemidError(f"--inputs {args.inputs} is not a file; write one JSON input per line")
        lines = [
            (n, ln) for n, ln in enumerate(args.inputs.read_text().splitlines(), 1) if ln.strip()
        ]
        if not lines:
            raise SemidError(f"--inputs {args.inputs} has no lines; write one JSON input per line")
        items = [_json_line(args.inputs, n, ln) for n, ln in lines]
        return [items[i % len(items)] for i in range(args.requests)]
    sample = getattr(predictor, "sample_inputs", None)
    if sample is None:
        raise SemidError(f"a {predictor.task} run has no sample inputs; pass --inputs FILE.jsonl, "
                         'one JSON input per line, e.g. {"query": "how to mount a disk"}')  # fmt: skip
    return sample(args.requests, seed=0)


def _json_line(path: Path, number: int, line: str) -> Any:
    """One --inputs line as JSON, or a SemidError naming the line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise SemidError(
            f"--inputs {path}: non-blank line {number} is not JSON ({e.msg})"
        ) from None


def summary(latencies: list[float], wall: float, load_before: tuple[float, float, float],
            load_after: tuple[float, float, float]) -> dict[str, Any]:  # fmt: skip
    """Requests/s, p50/p99 latency (ms) and the load averages around one timing."""
    ms = 1e3 * np.asarray(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "wall_s": wall,
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
    }


def bench_in_process(
    predictor: Predictor, inputs: list[dict], k: int, beams: int | None, batch: int = 1
) -> dict:
    """In this process, ``batch`` inputs per predict call, one call after another: (a) with batch 1;
    with a larger batch, the model's own ceiling for a server that batches that many requests."""
    chunks = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
    for chunk in chunks[:3]:
        predictor.predict(chunk, k, beams)
    latencies, answers = [], []
    load_before, start = os.getloadavg(), time.perf_counter()
    for chunk in chunks:
        t = time.perf_counter()
        answers.extend(a["keys"] for a in predictor.predict(chunk, k, beams))
        latencies.extend([time.perf_counter() - t] * len(chunk))
    wall = time.perf_counter() - start
    return summary(latencies, wall, load_before, os.getloadavg()) | {"keys": answers}


def start_server(args: argparse.Namespace, port: int, log: IO[bytes]) -> subprocess.Popen:
    """The server subprocess, once GET /health answers (SemidError if it exits or times out)."""
    spec = {
        "fake": args.fake, "run": str(args.run), "device": args.device, "port": port,
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.server_threads,
        "model_process": not args.in_process_model, "workers": args.workers,
        "delay_s": args.fake_delay_ms / 1e3, "per_input_s": args.fake_per_input_ms / 1e3,
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(spec)], stderr=log)
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc
        except (URLError, ConnectionError):
            time.sleep(0.1)
    proc.kill()
    proc.wait(30)
    log.seek(0)
    raise SemidError(f"the server did not come up on port {port}:\n{log.read().decode()[-2000:]}")


async def _post_all(
    session: aiohttp.ClientSession, inputs: list[dict], k, beams, concurrency: int
) -> list[tuple[float, int, list[str] | None]]:
    """POST each input alone, ``concurrency`` requests in flight -> (seconds, status, keys) each."""
    results: list[tuple[float, int, list[str] | None]] = [(0.0, 0, None)] * len(inputs)
    todo = iter(range(len(inputs)))

    async def worker() -> None:
        for i in todo:  # one shared iterator: each input is sent once
            t = time.perf_counter()
            body = {"inputs": [inputs[i]], "k": k, "num_beams": beams}
            async with session.post("/predict", json=body) as r:
                answer = await r.json()
                keys = answer["results"][0]["keys"] if r.status == 200 else None
                results[i] = (time.perf_counter() - t, r.status, keys)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _bench_http(base_url: str, inputs: list[dict], k, beams, concurrency: int) -> dict:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

        async def batching() -> dict:
            async with session.get("/info") as r:
                return (await r.json())["batching"]

        await _post_all(session, inputs[:concurrency], k, beams, concurrency)  # warm-up
        before = await batching()
        load_before, start = os.getloadavg(), time.perf_counter()
        results = await _post_all(session, inputs, k, beams, concurrency)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        after = await batching()
    calls = after["predict_calls"] - before["predict_calls"]
    out = summary([r[0] for r in results], wall, load_before, load_after)
    out["concurrency"] = concurrency
    out["errors"] = sum(r[1] != 200 for r in results)
    out["inputs_per_predict_call"] = (after["inputs"] - before["inputs"]) / max(calls, 1)
    out["keys"] = [r[2] for r in results]
    return out


def bench_http(base_url: str, inputs: list[dict], k: int, beams: int | None,
               concurrency: int) -> dict:  # fmt: skip
    """(b) one single-input POST /predict per input, ``concurrency`` at a time."""
    return asyncio.run(_bench_http(base_url, inputs, k, beams, concurrency))


def environment() -> dict:
    """Versions and machine, for the record."""
    import torch

    return {
        "python": platform.python_version(),
        "semid": __version__,
        "torch": torch.__version__,
        "machine": cpu_description(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_start": list(os.getloadavg()),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(result: dict) -> str:
    """Results as a Markdown table, with the command and environment."""
    env, cfg = result["environment"], result["config"]
    load = lambda x: "/".join(f"{v:.1f}" for v in x)  # noqa: E731
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {env['date_utc']}; machine: {env['machine']}; GPU: {env['cuda'] or 'none'}; "
        f"Python {env['python']}, torch {env['torch']}, semid {env['semid']}.  ",
        f"Predictor: {cfg['predictor']}; k {cfg['k']}, num_beams {cfg['num_beams'] or 'default'}; "
        f"server max_batch {cfg['max_batch']}, max_wait_ms {cfg['max_wait_ms']}, "
        f"{cfg.get('workers', 1)} model worker(s) "
        f"({'processes' if cfg.get('model_process') else 'in the server process'}) of "
        f"{cfg.get('server_threads', '?')} torch threads each; in-process "
        f"{cfg.get('torch_threads_in_process', '?')} torch threads; one input per request. "
        "Load averages (1/5/15 min) are `os.getloadavg()` before -> after each timing.",
        "",
        "| mode | concurrency | requests | req/s | p50 (ms) | p99 (ms) | inputs per predict call | "
        "same keys as in-process | errors | load avg before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = result["in_process"]
    lines.append(
        f"| in-process predict([x]){_passes_text(b)} | 1 | {b['requests']} | "
        f"{b['requests_per_s']:.1f} | "
        f"{b['p50_ms']:.2f} | {b['p99_ms']:.2f} | 1 | - | 0 | "
        f"{load(b['loadavg_before'])} -> {load(b['loadavg_after'])} |"
    )
    c = result.get("in_process_batched")
    if c is not None:
        lines.append(
            f"| in-process predict(batch of {c['batch']}), no HTTP{_passes_text(c)} | 1 | {c['requests']} | "
            f"{c['requests_per_s']:.1f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['batch']} | "
            f"{c['same_keys_as_in_process']:.3f} | 0 | "
            f"{load(c['loadavg_before'])} -> {load(c['loadavg_after'])} |"
        )
    for h in result["http"]:
        lines.append(
            f"| HTTP POST /predict{_passes_text(h)} | {h['concurrency']} | {h['requests']} | "
            f"{h['requests_per_s']:.1f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | "
            f"{h['inputs_per_predict_call']:.1f} | {h['same_keys_as_in_process']:.3f} | "
            f"{h['errors']} | {load(h['loadavg_before'])} -> {load(h['loadavg_after'])} |"
        )
    top = max(result["http"], key=lambda h: h["concurrency"])
    lines += [
        "",
        f"HTTP at concurrency {top['concurrency']} / in-process one at a time: "
        f"**{top['requests_per_s'] / b['requests_per_s']:.2f}x** (p99 {top['p99_ms']:.1f} ms).",
    ]
    return "\n".join(lines) + "\n"


def _passes_text(row: dict) -> str:
    """``, median of 3 passes (a / b / c)`` for a row of several passes; the older files' baseline
    was the faster of 2 passes, and their other rows one pass each."""
    passes = row.get("passes_requests_per_s", [])
    if len(passes) < 2:
        return ""
    said = " / ".join(f"{x:.1f}" for x in passes)
    if not row.get("median_of_passes"):
        return f", faster of 2 passes ({said})"  # as files written before the medians say
    return f", median of {len(passes)} passes ({said} req/s)"


def median_pass(passes: list[dict]) -> dict:
    """The pass of median requests/s (the lower middle one of an even count), with every pass's
    requests/s beside it (``passes_requests_per_s``)."""
    ranked = sorted(passes, key=lambda p: p["requests_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["passes_requests_per_s"] = [p["requests_per_s"] for p in passes]
    chosen["median_of_passes"] = True
    return chosen


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write OUT/NAME.{json,md}."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", nargs="?", type=Path, help="run directory (or --fake)")
    parser.add_argument("--fake", action="store_true", help="serve the synthetic FakePredictor")
    parser.add_argument("--fake-delay-ms", type=float, default=20.0, help="per predict call")
    parser.add_argument("--fake-per-input-ms", type=float, default=0.5, help="per input")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--inputs", type=Path, help="JSON lines, one input each (default: sampled)")
    parser.add_argument("--requests", "-n", type=int, default=256, help="requests per timing")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes of each timing, the median reported (default: %(default)s)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-beams", type=int, help="default: the predictor's")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="torch threads in process (default: torch's)")
    parser.add_argument("--server-threads", type=int, help="default: semid serve's (CPUs - 1)")
    parser.add_argument("--workers", type=int, help="model processes (default: semid serve's)")
    parser.add_argument(
        "--in-process-model", action="store_true",
        help="the server runs the model in its own process (as `semid serve --in-process`)",
    )  # fmt: skip
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for NAME.json, NAME.md")
    parser.add_argument("--name", default="serve", help="file stem (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.fake == (args.run is not None):
        parser.error("give a RUN or --fake (not both)")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        predictor = load_predictor_for(args)
        inputs = load_inputs(args, predictor)
    except SemidError as e:
        parser.error(str(e))
    if args.workers is None:
        args.workers = 1 if args.in_process_model else default_workers(resolve_device(args.device))
    result: dict[str, Any] = {
        "command": command_line("serve", argv),
        "environment": environment(),
        "config": {
            "predictor": "fake" if args.fake else str(args.run),
            **{k: getattr(args, k) for k in ("k", "num_beams", "max_batch", "max_wait_ms")},
            "server_threads": args.server_threads or default_threads(args.workers),
            "workers": args.workers,
            "model_process": not args.in_process_model,
            "torch_threads_in_process": torch.get_num_threads(),
            **(
                {"fake_delay_ms": args.fake_delay_ms, "fake_per_input_ms": args.fake_per_input_ms}
                if args.fake
                else {"device": args.device}
            ),
        },  # fmt: skip
    }
    print(f"[serve] in-process baseline, {len(inputs)} inputs", flush=True)
    baseline = bench_in_process(predictor, inputs, args.k, args.num_beams)
    top = max(args.concurrency)
    print(f"[serve] in-process, {top} inputs per call (no HTTP), {args.repeats} passes", flush=True)
    batched = median_pass([bench_in_process(predictor, inputs, args.k, args.num_beams, batch=top)
                           for _ in range(args.repeats)])  # fmt: skip
    batched["batch"] = top
    batched["same_keys_as_in_process"] = sum(
        a == b for a, b in zip(batched.pop("keys"), baseline["keys"], strict=True)
    ) / len(inputs)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    result["http"] = []
    with tempfile.TemporaryFile() as log:
        proc = start_server(args, port, log)
        try:
            for conc in args.concurrency:
                print(f"[serve] HTTP at concurrency {conc}, {args.repeats} passes", flush=True)
                h = median_pass([bench_http(f"http://127.0.0.1:{port}", inputs, args.k, args.num_beams, conc)
                                 for _ in range(args.repeats)])  # fmt: skip
                keys = h.pop("keys")
                same = sum(a == b for a, b in zip(keys, baseline["keys"], strict=True))
                h["same_keys_as_in_process"] = same / len(keys)
                result["http"].append(h)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    # the baseline's passes bracket the HTTP timings: one before them, the others after
    print(f"[serve] in-process baseline again, {args.repeats - 1} more passes", flush=True)
    passes = [baseline] + [bench_in_process(predictor, inputs, args.k, args.num_beams)
                           for _ in range(args.repeats - 1)]  # fmt: skip
    result["in_process"] = median_pass(passes)
    result["in_process"].pop("keys", None)
    result["in_process_batched"] = batched
    result["environment"]["loadavg_end"] = list(os.getloadavg())
    write_result(args.out / args.name, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
