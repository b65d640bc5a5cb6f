"""Latency and throughput of the Forkcast service, against the in-process floor and two classic servers.

    python benchmarks/serving.py [--seconds 10] [--batches 30] [--out benchmarks/results/serving-<UTC time>.json]

One run, one model, one machine (needs `wrk`, the pipeline's outputs and `forkcast build`):

- in-process sklearn / onnx: the floor, no HTTP. The scikit-learn pipeline (`outputs/model/model.joblib`) on a
  pandas DataFrame, and ONNX Runtime through `forkcast.model.onnx.OnnxModel` (`outputs/model/model.onnx`) on
  column lists, one thread each; median and p99 of many calls on 1 row, median on 1,000 rows;
- forkcast: the bento in `outputs/build/build.json` under `bentoml serve` (its own 2 workers, pydantic input
  checks, ONNX Runtime, the inference log written to a temporary directory);
- mlflow: `mlflow models serve` of `models:/forkcast-demand@production` (the same model, pyfunc, uvicorn);
- flask: `benchmarks/flask_app.py` under gunicorn (sync workers, a DataFrame per request).

The rows are those of `outputs/prepared/test.parquet`. Each server runs alone, with 2 workers and
OMP_NUM_THREADS=1 (one scoring thread per worker: 2 cores), on a free port. It is warmed up (3 s of wrk
at 8 connections, unmeasured), then wrk POSTs the same single-row body for `--seconds` on 1 connection
(latency p50/p99 and req/s at c=1) and on 8 connections (req/s at c=8), and finally 1,000-row requests
are sent one after another on one connection (`--batches` of them, median ms). wrk runs on the same 2 cores
as the server: the same handicap for every server. wrk corrects its latency percentiles for coordinated
omission: a request that stalls for T ms also counts the requests a steady client would have sent meanwhile,
so a rare long pause shows in the p99 with its weight in time, not in requests.

How to read it: the in-process rows are what the model itself costs; a server's 1-row p50 minus that floor
is its HTTP, parsing and framework overhead; req/s at c=8 is what its 2 workers sustain with both cores busy;
the 1,000-row column adds the cost of JSON and of turning records into model input. Marks: "!" a wrk run
with non-2xx answers or socket errors (the script then exits 1, after saving the JSON); "~" other processes
used more than 5% of the cores during that measurement (the figure is skewed: run again on a quiet machine);
"≠" one worker did most of the work (a 2-worker server with a few keep-alive connections may get them all on one
worker: its c=8 throughput then halves; the JSON has each process's CPU seconds).
The JSON has every wrk figure, where the CPU went during each run, the server commands and how far each
server's predictions are from the in-process pipeline's. The aims printed last: forkcast req/s at c=8 at
least 3× mlflow's and 1.5× flask's, and its 1-row p50 under 2.5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, cast

import httpx
import joblib
import numpy as np
import pandas as pd
from pipeline import git_commit, machine  # benchmarks/pipeline.py, next to this script
from threadpoolctl import threadpool_limits

from forkcast.model.onnx import OnnxModel, columns_of_frame
from forkcast.serving import build, deploy

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
MODEL_DIR = ROOT / "outputs" / "model"
TEST_SPLIT = ROOT / "outputs" / "prepared" / "test.parquet"
BUILD_JSON = ROOT / "outputs" / "build" / "build.json"
MLFLOW_TRACKING_URI = f"sqlite:///{ROOT / '.mlflow' / 'mlflow.db'}"
MLFLOW_MODEL = "models:/forkcast-demand@production"
HOST = "127.0.0.1"
RESERVED_PORTS = {3101, 3102}  # local staging and production
WORKERS = 2
BATCH_ROWS = 1_000
IN_PROCESS_SECONDS = 2.0  # per case
WARM_UP_SECONDS = 3
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
BUSY_SHARE = 0.05  # of all cores, taken by other processes during a measurement: its figures are marked "~"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_COUNT = os.cpu_count() or 1
TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
NO_TELEMETRY = {
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
VERSIONS = ("bentoml", "mlflow", "flask", "gunicorn", "uvicorn", "onnxruntime", "scikit-learn", "pandas")


class ServerError(RuntimeError):
    """A server did not start, did not answer, or answered wrongly."""


# --- where the CPU went -----------------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat, Linux)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class Process(NamedTuple):
    parent: int
    cpu_seconds: float  # so far
    started: int  # clock ticks after boot: with the pid, identifies the process


def processes() -> dict[int, Process]:
    """Every live process, by pid (/proc, Linux; zombies left out)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # processes come and go
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            if fields[0] != "Z":
                cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
                found[int(stat.parent.name)] = Process(int(fields[1]), cpu_seconds, int(fields[19]))
    return found


def tree(root: int, table: dict[int, Process]) -> set[int]:
    """`root` and its live descendants (BentoML's workers run in sessions of their own, so not a process group)."""
    members = {root} & table.keys()
    while grown := {pid for pid, info in table.items() if info.parent in members} - members:
        members |= grown
    return members


def identities(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of `root` and its descendants: a pid alone may have been reused by the time it is killed."""
    table = processes()
    return {(pid, table[pid].started) for pid in tree(root, table)}


def tree_cpu_seconds(root: int | None) -> dict[int, float]:
    """CPU seconds so far of `root` and of each of its descendants, by pid."""
    if root is None:
        return {}
    table = processes()
    return {pid: table[pid].cpu_seconds for pid in tree(root, table)}


@dataclass(frozen=True)
class CpuSnapshot:
    clock: float
    busy: float  # the whole machine
    server: dict[int, float]  # per process of the server
    children: float  # finished children of this script: wrk, once waited for
    this: float  # this script

    @classmethod
    def take(cls, server: int | None) -> CpuSnapshot:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.perf_counter(), busy_cpu_seconds(), tree_cpu_seconds(server),
                   children.ru_utime + children.ru_stime, time.process_time())  # fmt: skip


@contextlib.contextmanager
def cpu_accounting(server: int | None = None) -> Iterator[dict[str, Any]]:
    """Fills the yielded dict, when the block ends, with where the CPU went during it.

    `cpu_seconds`: the `server` process and its descendants, wrk, this script and every other process;
    `others_share`: the share of all cores the others took; `server_cpu_seconds_by_process`: busiest first,
    which shows how evenly the requests were spread over the workers.
    """
    accounting: dict[str, Any] = {}
    before = CpuSnapshot.take(server)
    yield accounting
    after = CpuSnapshot.take(server)
    by_process = sorted((used - before.server.get(pid, 0.0) for pid, used in after.server.items()), reverse=True)
    server_, wrk_, this = sum(by_process), after.children - before.children, after.this - before.this
    others = max(0.0, after.busy - before.busy - server_ - wrk_ - this)
    accounting["cpu_seconds"] = {"server": server_, "wrk": wrk_, "benchmark": this, "others": others}
    accounting["others_share"] = others / ((after.clock - before.clock) * CPU_COUNT)
    if server is not None:
        accounting["server_cpu_seconds_by_process"] = [round(seconds, 2) for seconds in by_process]


# --- in process -------------------------------------------------------------------------------------------


def time_calls(call: Callable[[], object], seconds: float) -> list[float]:
    """Milliseconds per call, for `seconds` (and at least 20 calls) after 5 unmeasured calls."""
    for _ in range(5):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 20 or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(samples_ms, 50)),
        "p99_ms": float(np.percentile(samples_ms, 99)),
        "mean_ms": float(np.mean(samples_ms)),
        "calls": len(samples_ms),
    }


def in_process(pipeline: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """The model without a server: scikit-learn on a DataFrame, ONNX Runtime on column lists, one thread."""
    onnx = OnnxModel((MODEL_DIR / "model.onnx").read_bytes())
    one, batch = frame.head(1), frame.head(BATCH_ROWS)
    names = list(pipeline.feature_names_in_)
    one_columns, batch_columns = columns_of_frame(one, names), columns_of_frame(batch, names)
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "sklearn": (lambda: pipeline.predict(one), lambda: pipeline.predict(batch)),
        "onnx": (lambda: onnx.predict(one_columns), lambda: onnx.predict(batch_columns)),
    }
    results: dict[str, Any] = {}
    with threadpool_limits(limits=1):  # as in every server worker
        for name, (single, many) in cases.items():
            with cpu_accounting() as cpu:
                one_row, many_rows = time_calls(single, IN_PROCESS_SECONDS), time_calls(many, IN_PROCESS_SECONDS)
            results[name] = {"one_row": summary(one_row), "batch": summary(many_rows), **cpu}
        difference = np.max(np.abs(onnx.predict(batch_columns) - pipeline.predict(batch)))
    results["onnx"]["max_abs_difference_vs_sklearn"] = float(difference)
    return results


# --- servers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    predict_path: str
    records_key: str  # the request body is {records_key: [record, ...]}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def body(self, records: list[dict[str, Any]]) -> bytes:
        return json.dumps({self.records_key: records}).encode()


def free_port() -> int:
    """A port the OS says is free now (never staging's or production's)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def server_env(**extra: str) -> dict[str, str]:
    """One OpenMP thread per worker; the venv's scripts first on PATH (mlflow execs `uvicorn`)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | NO_TELEMETRY | {"OMP_NUM_THREADS": "1", "PATH": path} | extra


def forkcast_server(inference_log: Path) -> Server:
    if not BUILD_JSON.exists():
        raise ServerError(f"{BUILD_JSON} is missing: run `forkcast build` (make build) first")
    bento = str(json.loads(BUILD_JSON.read_text())["bento"])
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", bento, "--host", HOST, "--port", str(port)]
    env = server_env(  # as `forkcast deploy` runs it
        **deploy.server_environment(
            ROOT / ".bentoml",
            home=inference_log.parent / "bentoml",
            bento=bento,
            model=build.describe(bento).model,
            environment="benchmark",
            inference_log=str(inference_log),
        )
    )
    return Server("forkcast", command, env, port, "/readyz", "/predict", "records")


def mlflow_server() -> Server:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", MLFLOW_MODEL, "--env-manager", "local"]
    command += ["--workers", str(WORKERS), "--host", HOST, "--port", str(port)]
    env = server_env(MLFLOW_TRACKING_URI=MLFLOW_TRACKING_URI)
    return Server("mlflow", command, env, port, "/ping", "/invocations", "dataframe_records")


def flask_server() -> Server:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync"]
    command += ["--bind", f"{HOST}:{port}", "--chdir", str(BENCHMARKS), "flask_app:app"]
    return Server("flask", command, server_env(), port, "/health", "/predict", "records")


def log_tail(log: Path, chars: int = 2_000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_ready(server: Server, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + server.health_path, timeout=2.0).status_code == 200:
                return
        if process.poll() is not None:
            raise ServerError(f"{server.name} exited with code {process.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{server.name} not ready within {READY_TIMEOUT:.0f} s:\n{log_tail(log)}")
        time.sleep(0.25)


def stop(process: subprocess.Popen[bytes], known: set[tuple[int, int]]) -> None:
    """SIGTERM to the server's process group, so it stops its workers, and wait; SIGKILL any of its processes
    (now or `known` earlier, as (pid, start time)) still alive after the timeouts."""
    members = known | identities(process.pid)

    def alive() -> set[int]:
        return {pid for pid, info in processes().items() if (pid, info.started) in members}

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)
    deadline = time.monotonic() + 5.0  # workers may outlive the leader briefly
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running(server: Server, log: Path) -> Iterator[tuple[int, float]]:
    """Serve in a new process group until the block ends, however it ends; yields its pid and start-up s."""
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(
            server.command, cwd=ROOT, env=server.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    members: set[tuple[int, int]] = set()
    try:
        wait_ready(server, process, log)
        members = identities(process.pid)  # its workers, even if the leader dies before the end
        yield process.pid, time.perf_counter() - started
    finally:
        stop(process, members)


# --- load -------------------------------------------------------------------------------------------------


def write_wrk_script(directory: Path, name: str, body: bytes) -> Path:
    """A wrk Lua script that POSTs `body` (kept in a file next to it) as JSON."""
    body_path = directory / f"{name}-body.json"
    body_path.write_bytes(body)
    script = directory / f"{name}-post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"local file = assert(io.open({json.dumps(str(body_path))}, 'rb'))\n"
        "wrk.body = file:read('*a')\n"
        "file:close()\n"
    )
    return script


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and error counts from `wrk --latency` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rate or not total:
        raise ServerError(f"unexpected wrk output:\n{output}")
    percentiles = {
        match[1]: float(match[2]) * TIME_UNITS_MS[match[3]]
        for match in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    socket_errors = dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {}
    return {
        "requests_per_second": float(rate[1]),
        "requests": int(total[1]),
        "latency_ms": percentiles,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": socket_errors,
        "errors": (int(non_2xx[1]) if non_2xx else 0) + sum(socket_errors.values()),
    }


def wrk(url: str, script: Path, connections: int, seconds: int, server: int) -> dict[str, Any]:
    """Single-row POSTs for `seconds` on `connections` connections, and where the CPU went meanwhile."""
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["--timeout", "10s", "-s", str(script), url]
    with cpu_accounting(server) as cpu:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise ServerError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return {"command": " ".join(command), "connections": connections, **parse_wrk(done.stdout), **cpu}


def post(client: httpx.Client, url: str, body: bytes) -> list[float]:
    response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    if response.status_code != 200:
        raise ServerError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return [float(value) for value in response.json()["predictions"]]


def batch_latency(url: str, body: bytes, count: int, server: int) -> dict[str, Any]:
    """Sequential 1,000-row requests on one keep-alive connection, after 3 unmeasured ones."""
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        for _ in range(3):
            post(client, url, body)
        samples = []
        with cpu_accounting(server) as cpu:
            for _ in range(count):
                started = time.perf_counter()
                post(client, url, body)
                samples.append((time.perf_counter() - started) * 1e3)
    return {**summary(samples), **cpu}


def agreement(url: str, body: bytes, expected: np.ndarray) -> float:
    """Largest difference between the server's predictions and the in-process pipeline's on the batch.

    Both are clipped at 0 first, as the Forkcast service clips them (demand is never negative).
    """
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        predictions = np.asarray(post(client, url, body))
    if predictions.shape != expected.shape:
        raise ServerError(f"{url} returned {predictions.size} predictions for {expected.size} records")
    return float(np.max(np.abs(np.clip(predictions, 0.0, None) - np.clip(expected, 0.0, None))))


def bench_server(
    server: Server, scratch: Path, records: list[dict[str, Any]], expected: np.ndarray, *, seconds: int, batches: int
) -> dict[str, Any]:
    """Start the server, check its answers, warm it up, measure c=1, c=8 and batches, stop it."""
    url = server.url + server.predict_path
    one_body, batch_body = server.body(records[:1]), server.body(records[:BATCH_ROWS])
    script = write_wrk_script(scratch, server.name, one_body)
    print(f"{server.name}: starting on port {server.port}", flush=True)
    with running(server, scratch / f"{server.name}.log") as (pid, startup_seconds):
        difference = agreement(url, batch_body, expected)
        wrk(url, script, 8, WARM_UP_SECONDS, pid)
        c1 = wrk(url, script, 1, seconds, pid)
        c8 = wrk(url, script, 8, seconds, pid)
        batch = batch_latency(url, batch_body, batches, pid)
    print(
        f"{server.name}: {c1['requests_per_second']:.0f} req/s at c=1, {c8['requests_per_second']:.0f} at c=8, "
        f"p50 {c1['latency_ms']['50']:.2f} ms, batch {batch['p50_ms']:.1f} ms; "
        f"CPU s per process at c=8 {c8['server_cpu_seconds_by_process']}; "
        f"predictions differ from the in-process pipeline's by up to {difference:.2g}",
        flush=True,
    )
    return {
        "command": server.command,
        "startup_seconds": startup_seconds,
        "max_abs_difference_vs_sklearn": difference,
        "c1": c1,
        "c8": c8,
        "batch": batch,
    }


# --- report -----------------------------------------------------------------------------------------------


def unbalanced(run: dict[str, Any]) -> bool:
    """Whether one worker did most of a multi-connection run: the second busiest process used under half the
    busiest's CPU (on a single connection, one worker serving everything is expected)."""
    busiest = run.get("server_cpu_seconds_by_process", [])
    return run.get("connections", 1) >= WORKERS and len(busiest) >= WORKERS and busiest[1] < busiest[0] / 2


def cell(value: float | None, digits: int, run: dict[str, Any]) -> str:
    """A figure with its marks: "!" the run had errors, "~" other processes took CPU during it, "≠" one worker
    served most of the requests."""
    if value is None:
        return "–"
    marks = "!" if run.get("errors") else ""
    marks += "~" if run["others_share"] > BUSY_SHARE else ""
    marks += "≠" if unbalanced(run) else ""
    return f"{value:,.{digits}f}{marks}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per way of serving."""
    header = ["", "1-row p50 ms", "1-row p99 ms", "req/s c=1", "req/s c=8", f"{BATCH_ROWS:,}-row batch ms"]
    lines = ["| " + " | ".join(header) + " |", "| --- " + "| ---: " * (len(header) - 1) + "|"]
    for name, run in results["in_process"].items():
        one, batch = run["one_row"], run["batch"]
        cells = [cell(one["p50_ms"], 3, run), cell(one["p99_ms"], 3, run), "–", "–", cell(batch["p50_ms"], 2, run)]
        lines.append(f"| in-process {name} | " + " | ".join(cells) + " |")
    for name, result in results["servers"].items():
        if "error" in result:
            lines.append(f"| {name} | failed (see the JSON) | | | | |")
            continue
        c1, c8, batch = result["c1"], result["c8"], result["batch"]
        cells = [cell(c1["latency_ms"].get("50"), 2, c1), cell(c1["latency_ms"].get("99"), 2, c1),
                 cell(c1["requests_per_second"], 0, c1), cell(c8["requests_per_second"], 0, c8),
                 cell(batch["p50_ms"], 1, batch)]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aims(servers: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's aims for the service, each with the measured value and whether it is met."""

    def c8(name: str) -> float | None:
        result = servers.get(name, {})
        return float(result["c8"]["requests_per_second"]) if "c8" in result else None

    forkcast, found = c8("forkcast"), []
    for other, target in (("mlflow", 3.0), ("flask", 1.5)):
        theirs = c8(other)
        ratio = forkcast / theirs if forkcast and theirs else None
        met = ratio is not None and ratio >= target
        found.append({"aim": f"forkcast req/s at c=8 ≥ {target:g}× {other}", "value": ratio, "unit": "×", "met": met})
    p50 = float(servers["forkcast"]["c1"]["latency_ms"]["50"]) if forkcast is not None else None
    met = p50 is not None and p50 < 2.5
    found.append({"aim": "forkcast 1-row p50 < 2.5 ms", "value": p50, "unit": " ms", "met": met})
    return found


def problems(results: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What makes the run invalid (failed servers, wrk runs with errors), and what skews it (busy machine)."""
    invalid, skewed = [], []
    for name, result in results["servers"].items():
        if "error" in result:
            invalid.append(f"{name} failed")
            continue
        for label in ("c1", "c8", "batch"):
            if result[label].get("errors"):
                invalid.append(f"{name} {label}: {result[label]['errors']} errors")
            if result[label]["others_share"] > BUSY_SHARE:
                skewed.append(f"{name} {label}: others took {result[label]['others_share']:.0%} of the CPU")
    for name, run in results["in_process"].items():
        if run["others_share"] > BUSY_SHARE:
            skewed.append(f"in-process {name}: others took {run['others_share']:.0%} of the CPU")
    return invalid, skewed


def versions() -> dict[str, str | None]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {package: version(package) for package in VERSIONS}


def exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running`, which stops the server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration at c=1 and at c=8")
    parser.add_argument("--batches", type=int, default=30, help=f"sequential {BATCH_ROWS:,}-row requests")
    parser.add_argument("--out", type=Path, help="JSON result (default: benchmarks/results/serving-<UTC time>.json)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    os.environ.update(NO_TELEMETRY)
    started_at = dt.datetime.now(dt.UTC)
    out = args.out or BENCHMARKS / "results" / f"serving-{started_at:%Y%m%dT%H%M%SZ}.json"

    started = time.perf_counter()
    pipeline = joblib.load(MODEL_DIR / "model.joblib")
    frame = pd.read_parquet(TEST_SPLIT, columns=list(pipeline.feature_names_in_))  # the model's own inputs
    records = cast("list[dict[str, Any]]", frame.to_dict(orient="records"))  # Python ints, floats and strings
    print(f"in process ({len(frame):,} test rows)", flush=True)
    results: dict[str, Any] = {"in_process": in_process(pipeline, frame), "servers": {}}
    with threadpool_limits(limits=1):
        expected = pipeline.predict(frame.head(BATCH_ROWS))
    with tempfile.TemporaryDirectory(prefix="forkcast-serving-") as directory:
        scratch = Path(directory)
        servers: dict[str, Callable[[], Server]] = {
            "forkcast": lambda: forkcast_server(scratch / "inference-log"),
            "mlflow": mlflow_server,
            "flask": flask_server,
        }
        for name, server in servers.items():
            try:
                result = bench_server(server(), scratch, records, expected, seconds=args.seconds, batches=args.batches)
            except (ServerError, httpx.HTTPError, subprocess.SubprocessError) as error:
                print(f"{name}: FAILED: {error}", file=sys.stderr, flush=True)
                result = {"error": str(error)}
            results["servers"][name] = result
    results["aims"] = aims(results["servers"])
    invalid, skewed = problems(results)
    record = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "workers": WORKERS,
            "omp_num_threads": 1,
            "wrk_seconds": args.seconds,
            "batches": args.batches,
            "warm_up_seconds": WARM_UP_SECONDS,
            "batch_rows": BATCH_ROWS,
            "busy_share": BUSY_SHARE,
        },
        "total_seconds": time.perf_counter() - started,
        "invalid": invalid,
        "skewed": skewed,
        **results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    print(f"\n{table(results)}\n")
    for aim in results["aims"]:
        value = "n/a" if aim["value"] is None else f"{aim['value']:.2f}{aim['unit']}"
        print(f"{aim['aim']}: {value} ({'met' if aim['met'] else 'MISSED'})")
    if skewed:
        print("\nSKEWED (~): other processes used the CPU: " + "; ".join(skewed), file=sys.stderr)
    if invalid:
        print("\nNOT VALID (!): " + "; ".join(invalid), file=sys.stderr)
    print(f"\nTotal {record['total_seconds']:.0f} s; result in {out}")
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
