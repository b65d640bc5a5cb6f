"""Local deployments: a built bento served in the background, one port per environment.

What runs where is recorded in `outputs/deploy/<environment>.json` (bento, port, pid, URL,
inference log, smoke result); the server's output goes to `outputs/deploy/<environment>.log`.
Production takes only a bento that passed the smoke tests in staging, and an explicit approval.

A deployment is every process that runs with its environment's own BENTOML_HOME
(`outputs/deploy/<environment>.bentoml`): the `bentoml serve` parent and its workers, which run in sessions
of their own. Stopping or replacing a deployment ends all of them, whatever died first, and the record is
replaced only once the new server answers. One deploy or stop at a time per environment (a lock file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import psutil

from forkcast import atomic, paths
from forkcast.serving.contract import MODEL_TAG_ENV, SHADOW_MODEL_ENV, SPILL_ENV

Environment = Literal["staging", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("staging", "production")
DEPLOY_DIR = paths.OUTPUTS / "deploy"
HOST = "127.0.0.1"


class DeployError(Exception):
    """A deployment was refused or did not come up."""


@dataclass(frozen=True)
class Deployment:
    environment: Environment
    bento: str
    model: str
    port: int
    pid: int
    url: str
    inference_log: str
    server_log: str
    started_at: str
    approved_by: str | None = None
    smoke: dict[str, Any] | None = None  # {"passed", "bento", "report", "at"}
    pid_started: str | None = None  # the process's start time: a reused pid is not our server
    challenger: str | None = None  # the model the bento scores in the shadow of `model`, if any

    @property
    def smoke_passed(self) -> bool:
        return self.smoke_state == "passed"

    @property
    def smoke_state(self) -> str:
        """passed, FAILED, or not run (a result for another bento does not count)."""
        if not self.smoke or self.smoke.get("bento") != self.bento:
            return "not run"
        return "passed" if self.smoke.get("passed") else "FAILED"


def record_path(environment: Environment) -> Path:
    return DEPLOY_DIR / f"{environment}.json"


def load(environment: Environment) -> Deployment | None:
    path = record_path(environment)
    return Deployment(**atomic.read_json(path)) if path.exists() else None


def save(deployment: Deployment) -> None:
    atomic.write_json(record_path(deployment.environment), asdict(deployment))


def is_running(pid: int) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped by its parent, has)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def process_started(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux); None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def is_alive(deployment: Deployment) -> bool:
    """The recorded server still runs: its pid exists and was not reused by another program."""
    if not is_running(deployment.pid):
        return False
    return deployment.pid_started is None or process_started(deployment.pid) == deployment.pid_started


def server_home(environment: Environment) -> Path:
    """The BENTOML_HOME that only this environment's server and its workers run with."""
    return (DEPLOY_DIR / f"{environment}.bentoml").resolve()


def processes_of(environment: Environment) -> list[psutil.Process]:
    """Every process of the environment's deployment, found by its BENTOML_HOME: the parent and its workers
    (each in a session of its own), also when the parent died first or the record was lost."""
    home = str(server_home(environment))
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile, or another user's
            if process.environ().get("BENTOML_HOME") == home:
                found.append(process)
    return found


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def exclusive(environment: Environment, wait: float = 300.0, waiting: Callable[[str], None] = _say) -> Iterator[None]:
    """Hold the environment's lock: a second deploy or stop waits for the first (up to `wait` s, saying so once
    through `waiting`), then fails."""
    DEPLOY_DIR.mkdir(parents=True, exist_ok=True)
    path = DEPLOY_DIR / f"{environment}.lock"
    with path.open("a+") as lock:
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                if not said:
                    waiting(
                        f"{environment} is being deployed or stopped by {holder}: waiting for it (up to {wait:.0f} s)"
                    )
                    said = True
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"{environment} is being deployed or stopped by {holder} for over {wait:.0f} s; "
                        f"wait for it, or end it and run the command again"
                    ) from None
                time.sleep(0.2)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])})")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def serving_home(store: Path, directory: Path) -> Path:
    """A BENTOML_HOME of its own for one server, sharing the store's bentos and models.

    bentoml keeps its Prometheus files under BENTOML_HOME and wipes them when a server starts:
    two servers on one home would mix their /metrics, and the second would erase the first's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("bentos", "models"):
        (store / name).mkdir(parents=True, exist_ok=True)
        link = directory / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((store / name).resolve(), target_is_directory=True)
    return directory


def bento_source(store: Path, bento: str) -> Path:
    """The code frozen into a bento. It must come first on the path: an editable install of the
    project would otherwise serve the working tree's code instead of the bento's."""
    name, _, version = bento.partition(":")
    return (store / "bentos" / name / version / "src").resolve()


def server_environment(
    store: Path, *, home: Path, bento: str, model: str, environment: str, inference_log: str,
    spill_dir: Path | None = None, challenger: str | None = None,
) -> dict[str, str]:  # fmt: skip
    """What `bentoml serve` needs to run `bento` as it was built: its own BENTOML_HOME over the store,
    the bento's frozen code first on the path, its own model (and challenger, or none), one scoring thread per worker,
    and the project's spill directory (`outputs/inference-spill/<env>` by default: the server runs inside the bento,
    where spilled rows would be deleted with it)."""
    spill = spill_dir or paths.OUTPUTS / "inference-spill" / environment
    return {
        **os.environ,
        "BENTOML_HOME": str(serving_home(store, home).resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(bento_source(store, bento)), os.environ.get("PYTHONPATH")])),
        MODEL_TAG_ENV: model,  # the bento's own model, whatever else the store holds
        SHADOW_MODEL_ENV: challenger or "",  # its challenger: `bentoml serve` does not apply the bento's envs
        "FORKCAST_ENVIRONMENT": environment,
        "FORKCAST_INFERENCE_LOG": inference_log,
        SPILL_ENV: str(spill.resolve()),
        "BENTOML_DO_NOT_TRACK": "True",
        "OMP_NUM_THREADS": "1",
    }


def check_promotion(bento: str, staging: Deployment | None, approved_by: str | None) -> None:
    """Production takes the bento that passed staging's smoke tests, once someone approved it."""
    if staging is None or staging.bento != bento:
        where = f"staging runs {staging.bento}" if staging else "nothing is deployed to staging"
        raise DeployError(f"{bento} has not been deployed to staging ({where}); deploy and smoke-test it there first")
    if not staging.smoke_passed:
        raise DeployError(
            f"{bento} has not passed the smoke tests in staging; run `forkcast smoke --env staging` and fix what fails"
        )
    if not approved_by:
        raise DeployError(
            "production needs an approval: pass --approve (in GitHub, the `production` environment's reviewers approve)"
        )


def start(
    environment: Environment,
    bento: str,
    model: str,
    port: int,
    inference_log: str,
    *,
    approved_by: str | None = None,
    ready_timeout: float = 90.0,
    challenger: str | None = None,
) -> Deployment:
    """Serve `bento` (holding `model`, and `challenger` to score in its shadow) in the background on `port`,
    replacing what the environment ran before.

    If the new server does not come up, the one it replaced is started again before the error is raised.
    """
    with exclusive(environment):
        return _replace(
            environment, bento, model=model, port=port, inference_log=inference_log, approved_by=approved_by,
            ready_timeout=ready_timeout, challenger=challenger,
        )  # fmt: skip


def _replace(
    environment: Environment,
    bento: str,
    *,
    model: str,
    port: int,
    inference_log: str,
    approved_by: str | None,
    ready_timeout: float,
    challenger: str | None = None,
) -> Deployment:
    current = load(environment)
    url = f"http://{HOST}:{port}"
    unchanged = current and (current.bento, current.model, current.port, current.inference_log) == (
        bento, model, port, inference_log,
    )  # fmt: skip
    if current and unchanged and is_alive(current) and is_ready(url):
        kept = replace(current, approved_by=approved_by or current.approved_by)  # already serving this bento
        save(kept)
        return kept
    end(environment)  # the record stays until the new server is up
    try:
        deployment = _launch(
            environment, bento, model, port, inference_log, approved_by=approved_by, ready_timeout=ready_timeout,
            challenger=challenger,
        )  # fmt: skip
    except DeployError as failure:
        if current is None or not current.model:
            raise
        try:
            previous = _launch(
                environment, current.bento, current.model, current.port, current.inference_log,
                approved_by=current.approved_by, ready_timeout=ready_timeout, challenger=current.challenger,
            )  # fmt: skip
        except DeployError as second:
            record_path(environment).unlink(missing_ok=True)  # nothing runs there now
            raise DeployError(f"{failure}\nand {current.bento} could not be started again: {second}") from failure
        save(replace(previous, smoke=current.smoke))
        raise DeployError(f"{failure}\n{environment} serves {current.bento} again, as before") from failure
    save(deployment)
    return deployment


def _launch(
    environment: Environment,
    bento: str,
    model: str,
    port: int,
    inference_log: str,
    *,
    approved_by: str | None,
    ready_timeout: float,
    challenger: str | None = None,
) -> Deployment:
    if not port_is_free(port):
        raise DeployError(f"port {port} for {environment} is taken by another program; free it or change serve.*_port")
    DEPLOY_DIR.mkdir(parents=True, exist_ok=True)
    server_log = DEPLOY_DIR / f"{environment}.log"
    environment_variables = server_environment(
        Path(os.environ.get("BENTOML_HOME", ".bentoml")),
        home=DEPLOY_DIR / f"{environment}.bentoml",
        bento=bento,
        model=model,
        environment=environment,
        inference_log=inference_log,
        challenger=challenger,
    )
    command = [sys.executable, "-m", "bentoml", "serve", bento, "--host", HOST, "--port", str(port)]
    log_start = server_log.stat().st_size if server_log.exists() else 0
    with server_log.open("ab") as output:
        process = subprocess.Popen(  # its own session: it outlives this command, and stops as a group
            command, stdout=output, stderr=subprocess.STDOUT, env=environment_variables, start_new_session=True
        )
    try:
        _wait_until_ready(process, f"http://{HOST}:{port}", server_log, log_start, ready_timeout)
    except BaseException:  # a failed start, or Ctrl-C: leave no server behind, workers included
        end(environment, timeout=30)
        raise
    return Deployment(
        environment=environment,
        bento=bento,
        model=model,
        port=port,
        pid=process.pid,
        pid_started=process_started(process.pid),
        url=f"http://{HOST}:{port}",
        inference_log=inference_log,
        server_log=str(server_log),
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        approved_by=approved_by,
        challenger=challenger,
    )


def _wait_until_ready(
    process: subprocess.Popen[bytes], url: str, server_log: Path, log_start: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not is_ready(url):
        output = _read_from(server_log, log_start)
        if process.poll() is not None:
            raise DeployError(f"the server exited with code {process.returncode} while starting:\n{_tail(output)}")
        if "Application startup failed" in output:
            raise DeployError(f"the service failed to start (full log: {server_log}):\n{_tail(output)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the server was not ready within {timeout:.0f} s (full log: {server_log})")
        time.sleep(0.25)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join("  " + line for line in text.strip().splitlines()[-lines:])


def stop(environment: Environment, timeout: float = 60.0) -> Deployment | None:
    """Stop every process of the environment's server (the workers flush their inference logs first) and forget
    it; returns what the record said ran there (None without a record, even if stray processes were ended)."""
    with exclusive(environment):
        current = load(environment)
        end(environment, timeout)
        record_path(environment).unlink(missing_ok=True)
        return current


def end(environment: Environment, timeout: float = 60.0) -> list[int]:
    """End every process of the environment's deployment: SIGTERM (bentoml stops its workers, which run their
    shutdown hooks; workers whose parent is gone get it directly), then SIGKILL for those still there after
    `timeout` s. Returns the pids ended; raises if one cannot be ended."""
    processes = processes_of(environment)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.parent() is None or process.parent() not in processes:  # the parent, or an orphan
                process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, unkillable = psutil.wait_procs(alive, timeout=10)
    if unkillable:
        pids = ", ".join(str(process.pid) for process in unkillable)
        raise DeployError(f"{environment}: could not end process {pids}; end it and run the command again")
    return [process.pid for process in processes]


@dataclass(frozen=True)
class Health:
    """How a deployment is doing: `ready`, or why not, and its processes."""

    recorded: Deployment | None
    pids: tuple[int, ...]
    state: Literal["ready", "DOWN", "ORPHANED", "UNRECORDED", "not deployed"]

    @property
    def ok(self) -> bool:
        return self.state in {"ready", "not deployed"}

    @property
    def detail(self) -> str:
        processes = ", ".join(map(str, self.pids))
        return {
            "ready": "",
            "DOWN": "nothing answers",
            "ORPHANED": f"the server process is gone; workers {processes} serve on without it (nothing restarts them)",
            "UNRECORDED": f"no record, but processes {processes} serve it",
            "not deployed": "",
        }[self.state]


def health(environment: Environment) -> Health:
    current = load(environment)
    pids = tuple(process.pid for process in processes_of(environment))
    if current is None:
        return Health(None, pids, "UNRECORDED" if pids else "not deployed")
    if is_alive(current):
        return Health(current, pids, "ready" if is_ready(current.url) else "DOWN")
    return Health(current, pids, "ORPHANED" if pids else "DOWN")


def record_smoke(environment: Environment, passed: bool, report: Path, tested: Deployment | None = None) -> Deployment:
    """Record the smoke tests' result on the environment's deployment. With `tested` (the deployment the tests
    ran against), refuse when another server has replaced it meanwhile: its result says nothing of the new one."""
    with exclusive(environment):
        current = load(environment)
        if current is None:
            raise DeployError(f"nothing is deployed to {environment}")
        if tested is not None and (current.bento, current.pid, current.started_at) != (
            tested.bento, tested.pid, tested.started_at,
        ):  # fmt: skip
            raise DeployError(
                f"{environment} was redeployed while the smoke tests ran ({tested.bento} then, {current.bento} now): "
                f"the result is not recorded; run `forkcast smoke --env {environment}` again"
            )
        smoke = {
            "passed": passed,
            "bento": current.bento,
            "report": str(report),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        updated = replace(current, smoke=smoke)
        save(updated)
        return updated
