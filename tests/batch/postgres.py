"""A real PostgreSQL server in a temporary directory (Debian's `postgresql`: initdb + pg_ctl), for tests and benchmarks.

initdb refuses to run as root: as root, the server's files belong to, and it runs as, the `postgres` user (the
package creates it), through `runuser`. Where no server is installed the tests are skipped with the reason, and in
CI they fail (`.ci/run` installs it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN = Path(os.environ.get("FORKCAST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
USER = "postgres"  # the server's user when the tests run as root


class Unavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(USER)
    except KeyError as exc:
        raise Unavailable(f"running as root and there is no `{USER}` user to run the server as") from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root and `runuser` (util-linux), which would run the server as postgres, is gone")
    return [runuser, "-u", USER, "--"]


@contextlib.contextmanager
def server(*, durable: bool = False) -> Iterator[str]:
    """A server of its own on 127.0.0.1 with trust authentication; yields its URL (database `postgres`).

    Without `durable`, fsync is off: the tests need no crash safety, and it is faster.
    """
    if not (BIN / "initdb").exists():
        raise Unavailable(f"no PostgreSQL server here ({BIN}/initdb): apt-get install postgresql (.ci/run does)")
    prefix = _as_server_user()
    directory = Path(tempfile.mkdtemp(prefix="forkcast-postgres-"))
    if prefix:
        shutil.chown(directory, USER, USER)
    data, log, port = directory / "data", directory / "server.log", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise Unavailable(f"{Path(args[0]).name} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}{tail}")

    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1" + ("" if durable else " -c fsync=off")
    try:
        run(str(BIN / "initdb"), "-D", str(data), "-U", "forkcast", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        yield f"postgresql://forkcast@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)
