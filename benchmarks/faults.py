"""The service and the tooling on a bad day: the faults of a production endpoint, reproduced and measured.

    python benchmarks/faults.py [--seconds 20] [--only disk,tracking,parent,headers,crash] [--out FILE.json]

Needs the pipeline's outputs, `forkcast build` and `wrk`; the full disk needs root (a 256 KiB tmpfs is mounted),
without it the log's sink is made to fail instead (a file where its directory should be).

1. **A full log disk.** The bento under `bentoml serve` (2 workers, as `forkcast deploy` runs it), wrk at 8
   connections POSTing one natural cycle of test rows per request, for `--seconds`: once with the inference log
   on a normal disk, once with it on a full 256 KiB filesystem while the spill directory has room, once with both
   full (rows dropped). For each: req/s, p50/p99, the workers' memory growth over the run, tracebacks and
   `inference log:` lines in the server's output, and the `forkcast_inference_log_*` metrics.
2. **The tracking server dies or hangs during `register`** (in a copy of the project's outputs, so the project's
   own gate verdict is untouched): a real `mlflow server` killed with SIGKILL once the run is open, and a server
   that answers /health and then nothing. Seconds from the fault to `register`'s exit, and its exit code.
3. **The server's parent is killed** (`kill -9` of the recorded pid, a deployment in a scratch directory): do
   its workers still answer, what `forkcast status` says, and whether `undeploy` leaves any process or the port.
4. **Hostile headers**: a 1 MB header and a 500 KB `x-request-id` on 1,000-record requests: the answers and
   the workers' memory before and after.
5. **A worker killed under load** (SIGKILL, as the OOM killer does), half-way through `--seconds` of 8 clients:
   rows answered but never logged, with the default 5 s flush and with `FORKCAST_INFERENCE_FLUSH_SECONDS=1`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
from pipeline import git_commit, machine  # benchmarks/pipeline.py, next to this script
from serving import (  # benchmarks/serving.py
    BUILD_JSON,
    HOST,
    NO_TELEMETRY,
    ROOT,
    TEST_SPLIT,
    Server,
    free_port,
    running,
    server_env,
    write_wrk_script,
    wrk,
)

from forkcast.data.declaration import load as load_dataset
from forkcast.serving import build, deploy

BENCHMARKS = ROOT / "benchmarks"
WARM_UP_SECONDS = 3
CONNECTIONS = 8
CRASH_TRIALS = 3
REGISTER_GUARD_SECONDS = 900.0  # a register still running after this is reported as hung
PROJECT_FILES = ("params.yaml", "dataset.yaml", "data.dvc", "dvc.lock")
PROJECT_OUTPUTS = ("validation", "prepared", "evaluation", "served")


# --- 1. a full log disk -----------------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk(directory: Path) -> Iterator[str]:
    """`directory` made a full filesystem: a 256 KiB tmpfs filled up (root), else a file in its way.
    Yields how it was made full."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(directory)], capture_output=True, check=False
    )
    if mounted.returncode == 0:
        with contextlib.suppress(OSError), (directory / "filler").open("wb") as filler:
            filler.write(b"\0" * 512 * 1024)  # fails once the filesystem is full: that is the point
        try:
            yield "a full 256 KiB tmpfs"
        finally:
            subprocess.run(["umount", "--lazy", str(directory)], check=False)
        return
    blocker = directory / "blocked"
    blocker.write_text("a file where the log's directory should be")
    yield "a failing sink (not root: no tmpfs)"


def workers_rss_mb(parent: int) -> float:
    """Resident memory of the server's workers together (its own sessions: found as its children)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(parent).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total / 2**20


def log_metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {name: float(value) for name, value in re.findall(r"^(forkcast_\S+) (\S+)$", text, flags=re.MULTILINE)}


def forkcast_server(scratch: Path, sink: Path, spill: Path) -> Server:
    bento = str(json.loads(BUILD_JSON.read_text())["bento"])
    env = server_env(
        **deploy.server_environment(
            ROOT / ".bentoml", home=scratch / "bentoml", bento=bento, model=build.describe(bento).model,
            environment="faults", inference_log=str(sink), spill_dir=spill,
        )
    )  # fmt: skip
    command = [sys.executable, "-m", "bentoml", "serve", bento, "--host", HOST, "--port", str(free_port())]
    server = Server("forkcast", command, env, int(command[-1]), "/readyz", "/predict", "records")
    return server


def cycle_body() -> bytes:
    """One natural cycle of test rows (a day of hours for the bikes), as a request."""
    inputs = load_dataset(ROOT / "dataset.yaml").inputs()
    frame = pd.read_parquet(TEST_SPLIT, columns=list(inputs.names))
    rows = frame.head(inputs.frequency.rows_per_cycle).to_dict(orient="records")
    return json.dumps({"records": rows}).encode()


def log_disk_run(name: str, scratch: Path, sink: Path, spill: Path, seconds: int) -> dict[str, Any]:
    server = forkcast_server(scratch, sink, spill)
    url = server.url + server.predict_path
    script = write_wrk_script(scratch, name, cycle_body())
    output = scratch / f"{name}.log"
    with running(server, output) as (pid, _):
        wrk(url, script, CONNECTIONS, WARM_UP_SECONDS, pid)
        before = workers_rss_mb(pid)
        load = wrk(url, script, CONNECTIONS, seconds, pid)
        after = workers_rss_mb(pid)
        metrics = log_metrics(server.url)
    text = output.read_text(errors="replace")
    result = {
        "requests_per_second": load["requests_per_second"],
        "p50_ms": load["latency_ms"].get("50"),
        "p99_ms": load["latency_ms"].get("99"),
        "errors": load["errors"],
        "workers_rss_mb_before": round(before, 1),
        "workers_rss_growth_mb": round(after - before, 1),
        "tracebacks": text.count("Traceback"),
        "log_lines": text.count("inference log:"),
        "metrics": metrics,
    }
    print(f"  {name}: {json.dumps(result)}", flush=True)
    return result


def log_disk(scratch: Path, seconds: int) -> dict[str, Any]:
    print("1. the inference log's disk", flush=True)
    results: dict[str, Any] = {"normal": log_disk_run("normal", scratch, scratch / "log", scratch / "spill", seconds)}
    with full_disk(scratch / "full") as how:
        results["how"] = how
        results["sink full, spill has room"] = log_disk_run(
            "sink-full", scratch, scratch / "full" / "blocked" / "log", scratch / "spill-ok", seconds
        )
        results["sink and spill full"] = log_disk_run(
            "both-full", scratch, scratch / "full" / "blocked" / "log", scratch / "full" / "blocked" / "spill", seconds
        )
    return results


# --- 2. the tracking server during register ---------------------------------------------------------------


def project_copy(directory: Path) -> Path:
    """The files `register` reads, so that its verdict lands in the copy, not in the project."""
    directory.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, directory / name)
    for name in PROJECT_OUTPUTS:
        shutil.copytree(ROOT / "outputs" / name, directory / "outputs" / name)
    return directory


def register(project: Path, uri: str) -> subprocess.Popen[str]:
    env = os.environ | NO_TELEMETRY | {"MLFLOW_TRACKING_URI": uri}
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        env.pop(name, None)  # forkcast's own bounds, as a user gets them
    forkcast = Path(sys.executable).parent / "forkcast"
    return subprocess.Popen([str(forkcast), "register"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(process: subprocess.Popen[str], fault_at: float) -> dict[str, Any]:
    try:
        _, error = process.communicate(timeout=REGISTER_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return {"exit": None, "seconds_after_fault": None, "message": "still running: hung"}
    said = [line for line in error.splitlines() if "MLflow" in line and "..." not in line]  # not the step line
    message = said[-1] if said else error.strip()[-300:]
    return {"exit": process.returncode, "seconds_after_fault": round(time.monotonic() - fault_at, 1),
            "message": message[:300]}  # fmt: skip


def killed_tracking_server(scratch: Path) -> dict[str, Any]:
    store = scratch / "mlflow-store"
    store.mkdir()
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art"),
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=store, env=server_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                return {"error": "mlflow server did not start"}
            time.sleep(0.5)
        project = project_copy(scratch / "killed")
        process = register(project, f"http://{HOST}:{port}")
        marker = project / "outputs" / "registry" / "open-run.json"
        while not marker.exists() and process.poll() is None:
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    return finish(process, time.monotonic())


def hung_tracking_server(scratch: Path) -> dict[str, Any]:
    released = threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            released.wait(REGISTER_GUARD_SECONDS)

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        process = register(project_copy(scratch / "hung"), f"http://{HOST}:{server.server_address[1]}")
        return finish(process, time.monotonic())  # it hangs from the first request after the check
    finally:
        released.set()
        server.shutdown()
        server.server_close()


def tracking(scratch: Path) -> dict[str, Any]:
    print("2. the tracking server during register", flush=True)
    results = {"killed mid-run": killed_tracking_server(scratch), "hung after the check": hung_tracking_server(scratch)}
    for name, result in results.items():
        print(f"  {name}: {json.dumps(result)}", flush=True)
    return results


# --- 3. a killed parent -----------------------------------------------------------------------------------


def killed_parent(scratch: Path) -> dict[str, Any]:
    print("3. the server's parent killed", flush=True)
    bento = str(json.loads(BUILD_JSON.read_text())["bento"])
    place = scratch / "deploy-project"
    place.mkdir()
    home = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(ROOT / ".bentoml")
    here = Path.cwd()
    os.chdir(place)  # deployments are recorded under ./outputs/deploy
    try:
        deployment = deploy.start("staging", bento, build.describe(bento).model, free_port(), str(place / "log"))
        workers = [process.pid for process in deploy.processes_of("staging") if process.pid != deployment.pid]
        os.kill(deployment.pid, signal.SIGKILL)
        time.sleep(1.0)
        answering = deploy.is_ready(deployment.url)
        health = deploy.health("staging")
        started = time.monotonic()
        deploy.stop("staging")
        result = {
            "workers": len(workers),
            "workers_answer_after_the_kill": answering,
            "status": health.state,
            "status_detail": health.detail,
            "undeploy_seconds": round(time.monotonic() - started, 1),
            "processes_left": len(deploy.processes_of("staging")),
            "port_answers_after_undeploy": deploy.is_ready(deployment.url),
        }
    finally:
        with contextlib.suppress(Exception):
            deploy.stop("staging")
        os.chdir(here)
        if home is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = home
    print(f"  {json.dumps(result)}", flush=True)
    return result


# --- 4. hostile headers -----------------------------------------------------------------------------------


def hostile_headers(scratch: Path) -> dict[str, Any]:
    print("4. hostile headers", flush=True)
    inputs = load_dataset(ROOT / "dataset.yaml").inputs()
    rows = pd.read_parquet(TEST_SPLIT, columns=list(inputs.names)).head(1_000).to_dict(orient="records")
    body = json.dumps({"records": rows}).encode()
    server = forkcast_server(scratch, scratch / "headers-log", scratch / "headers-spill")
    with running(server, scratch / "headers.log") as (pid, _), httpx.Client(timeout=30) as client:
        url = server.url + server.predict_path
        plain = {"content-type": "application/json"}
        for _ in range(5):
            client.post(url, content=body, headers=plain)
        before = workers_rss_mb(pid)
        big_header = client.post(url, content=body, headers={**plain, "x-padding": "a" * 1_000_000})
        statuses = [
            client.post(url, content=body, headers={**plain, "x-request-id": "r" * 500_000}).status_code
            for _ in range(20)
        ]
        after = workers_rss_mb(pid)
        ok = client.post(url, content=body, headers={**plain, "x-request-id": "a-short-id"}).status_code
    result = {
        "1 MB header": big_header.status_code,
        "500 KB x-request-id, 20 requests of 1,000 records": sorted(set(statuses)),
        "a valid id afterwards": ok,
        "workers_rss_mb_before": round(before, 1),
        "workers_rss_growth_mb": round(after - before, 1),
    }
    print(f"  {json.dumps(result)}", flush=True)
    return result


# --- 5. a killed worker: the crash-loss window ----------------------------------------------------------------


async def answered_rows(
    url: str, body: bytes, clients: int, seconds: float, *, kill_at: float, kill: Callable[[], None]
) -> int:
    """Rows answered with a 200 by `clients` callers in `seconds`; `kill()` is called after `kill_at` s."""
    import asyncio

    answered = 0
    stop_at = time.monotonic() + seconds
    killed = False

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal answered, killed
        while time.monotonic() < stop_at:
            if not killed and time.monotonic() > stop_at - seconds + kill_at:
                killed = True
                kill()
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                if response.status_code == 200:
                    answered += len(response.json()["predictions"])

    limits = httpx.Limits(max_connections=clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(caller(client) for _ in range(clients)))
    return answered


def crash_window(scratch: Path, seconds: int) -> dict[str, Any]:
    """One worker killed with SIGKILL half-way through a load run: rows answered but never logged, for the default
    flush interval and a 1 s one (more, smaller files)."""
    import asyncio

    from forkcast.serving import inference_log

    print("5. a worker killed under load (the crash-loss window)", flush=True)
    body = cycle_body()
    results: dict[str, Any] = {}
    for flush in ("5", "1"):
        trials = []
        for trial in range(CRASH_TRIALS):
            sink = scratch / f"crash-log-{flush}-{trial}"
            server = forkcast_server(scratch, sink, scratch / f"crash-spill-{flush}-{trial}")
            server.env["FORKCAST_INFERENCE_FLUSH_SECONDS"] = flush
            with running(server, scratch / f"crash-{flush}-{trial}.log") as (pid, _):
                worker = psutil.Process(pid).children()[0]

                def kill(worker: psutil.Process = worker) -> None:
                    worker.kill()

                answered = asyncio.run(
                    answered_rows(server.url + "/predict", body, 8, seconds, kill_at=seconds / 2, kill=kill)
                )
            logged = inference_log.read(str(sink)).num_rows
            trials.append({"answered_rows": answered, "lost_rows": answered - logged,
                           "rows_per_second_per_worker": round(answered / seconds / 2),
                           "files": len(list(sink.rglob("*.parquet")))})  # fmt: skip
            print(f"  flush every {flush} s, trial {trial + 1}: {json.dumps(trials[-1])}", flush=True)
        results[f"flush every {flush} s"] = {"trials": trials, "most_lost": max(t["lost_rows"] for t in trials)}
    return results


# --- report -----------------------------------------------------------------------------------------------


def logged_rows(metrics: dict[str, float], outcome: str) -> float:
    return metrics.get('forkcast_inference_log_rows_total{outcome="' + outcome + '"}', 0.0)


def table(disk: dict[str, Any]) -> str:
    rows = ["| inference log | req/s | p50 ms | p99 ms | workers' memory growth | tracebacks | log lines | "
            "spilled | dropped | write failures |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, run in disk.items():
        if not isinstance(run, dict):
            continue
        metrics = run["metrics"]
        rows.append(
            f"| {name} | {run['requests_per_second']:.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
            f"{run['workers_rss_growth_mb']:+.0f} MB | {run['tracebacks']} | {run['log_lines']} | "
            f"{logged_rows(metrics, 'spilled'):,.0f} | {logged_rows(metrics, 'dropped'):,.0f} | "
            f"{metrics.get('forkcast_inference_log_write_failures_total', 0):.0f} |"
        )
    return "\n".join(rows)


PARTS: dict[str, tuple[str, Callable[[Path, int], dict[str, Any]]]] = {
    "disk": ("log disk", log_disk),
    "tracking": ("tracking server", lambda scratch, _: tracking(scratch)),
    "parent": ("killed parent", lambda scratch, _: killed_parent(scratch)),
    "headers": ("headers", lambda scratch, _: hostile_headers(scratch)),
    "crash": ("killed worker", crash_window),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration of each inference-log run")
    parser.add_argument("--only", default=",".join(PARTS), help=f"some of {', '.join(PARTS)} (comma-separated)")
    parser.add_argument("--out", type=Path, help="JSON result (default: benchmarks/results/faults-<UTC time>.json)")
    args = parser.parse_args()
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    if unknown := sorted(set(chosen) - set(PARTS)):
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if not BUILD_JSON.exists():
        print(f"{BUILD_JSON} is missing: run `forkcast build` (make build) first", file=sys.stderr)
        return 2
    os.environ.update(NO_TELEMETRY)
    started_at = dt.datetime.now(dt.UTC)
    out = args.out or BENCHMARKS / "results" / f"faults-{started_at:%Y%m%dT%H%M%SZ}.json"
    with tempfile.TemporaryDirectory(prefix="forkcast-faults-") as directory:
        scratch = Path(directory)
        results = {PARTS[part][0]: PARTS[part][1](scratch, args.seconds) for part in chosen}
    record = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "settings": {"seconds": args.seconds, "connections": CONNECTIONS, "warm_up_seconds": WARM_UP_SECONDS},
        **results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    if "log disk" in results:
        print(f"\n{table(results['log disk'])}")
    print(f"\nresult in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
