"""What every lasting deploy target shares: the smoke test against the new deployment, the record of what serves
where (`outputs/deploy/<environment>.target.json`), and the lines for $GITHUB_OUTPUT and the job summary."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forkcast import atomic, paths
from forkcast.config import Params
from forkcast.model import history
from forkcast.serving import smoke

DEPLOY_DIR = paths.OUTPUTS / "deploy"
DIGEST_PIN = re.compile(r"^(?P<repository>[a-z0-9][a-z0-9._/:-]*)@(?P<digest>sha256:[0-9a-f]{64})$")


class TargetError(Exception):
    """A deployment failed; the message says why and in what state it left the environment. `usage`: the request
    itself was wrong (an image not pinned by digest, a missing tool), so nothing was touched."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Deployed:
    """One environment's deployment through a target: what serves, where, and since when."""

    target: str
    environment: str
    url: str
    image: str
    smoke_report: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=history.now)


def pinned_image(image: str) -> tuple[str, str]:
    """`repository@sha256:<64 hex>` split in two; anything else (a tag, a short digest) is refused: a release
    deploys exactly the digest it built and tested."""
    found = DIGEST_PIN.match(image)
    if found is None:
        raise TargetError(
            f"image '{image}' is not pinned by digest: give it as repository@sha256:<64 hex digits> "
            "(the build job's `image` output)",
            usage=True,
        )
    return found["repository"], found["digest"]


def check_url(url: str | None) -> None:
    """A URL users reach the service at must be http(s)://host...: a typo would fail the smoke tests and roll back a
    good release instead."""
    if url is not None and not re.match(r"^https?://[^/\s:]+", url):
        raise TargetError(f"--url / FORKCAST_URL '{url}' is not an http:// or https:// address", usage=True)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a cancelled job's) raises KeyboardInterrupt: the deploy can put back what served."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def smoke_test(url: str, environment: str, golden: Path, params: Params) -> smoke.SmokeReport:
    """The smoke suite (`forkcast smoke`) against `url`; its report goes to outputs/smoke/<environment>."""
    suite = smoke.SmokeSuite(smoke.Golden.read(golden), params.smoke.latency_requests, params.smoke.p95_budget_ms)
    report = smoke.run(url, suite)
    smoke.save(report, smoke_dir(environment))
    return report


def smoke_dir(environment: str) -> Path:
    return paths.OUTPUTS / "smoke" / environment


def failed_checks(report: smoke.SmokeReport) -> str:
    return "; ".join(f"{check.name}: {check.detail}" for check in report.checks if not check.passed) or "incomplete"


def record_path(environment: str) -> Path:
    return DEPLOY_DIR / f"{environment}.target.json"


def record(deployed: Deployed, model_version: str | None = None) -> Path:
    """What serves the environment now, and a line in the deployments' history (`forkcast history`)."""
    path = record_path(deployed.environment)
    atomic.write_json(path, asdict(deployed))
    history.append_deployment(
        history.DeploymentEvent(
            at=deployed.at, environment=deployed.environment, target=deployed.target, model_version=model_version,
            image=deployed.image, url=deployed.url,
        )
    )  # fmt: skip
    return path


def step_outputs(deployed: Deployed) -> str:
    """For $GITHUB_OUTPUT: the URL, and that the target already smoke-tested it (the workflow need not again)."""
    return f"url={deployed.url}\nsmoked=true\n"


def summary(deployed: Deployed) -> str:
    """The job summary's lines: which target ran and where the release now serves."""
    lines = [
        f"### {deployed.environment}: `{deployed.target}` target",
        "",
        f"- serves at {deployed.url}",
        f"- image `{deployed.image}`",
    ]
    lines += [f"- {key}: {value}" for key, value in deployed.detail.items()]
    lines.append(f"- smoke tests passed ({deployed.smoke_report})")
    return "\n".join(lines) + "\n"
