"""`forkcast score` at 1M rows: rows per second and peak memory, into SQLite and into PostgreSQL.

    python benchmarks/scoring.py                          # 1M rows, the last build's bento, both databases
    python benchmarks/scoring.py --rows 100000 --chunk-rows 5000 --databases sqlite

The input is the real data's prepared rows (`build_features` of `data/bikeshare_hourly.csv`, 8,645 hours) repeated
until it holds the rows asked for, each copy's times a year (8,760 hours) after the last, so every row has a key
of its own; written once as Parquet. Each database gets a fresh, empty table: a SQLite file in a temporary
directory, and a PostgreSQL 15 server of its own (Debian's, started with initdb + pg_ctl, fsync on). For each:

- **first run**: `forkcast score --input ... --bento TAG` in a child process: wall time of the child, rows/s of its
  scoring loop (as it prints it: scoring, writing and the transactions), peak RSS of exactly that child
  (`ru_maxrss` of `os.wait4`: interpreter, imports, the input and the model included);
- **retry**: the same command again, which must add no row (every chunk is found written and skipped).

Prints a Markdown table and writes benchmarks/results/scoring.json (gitignored: every run, the machine, the commit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/batch/postgres.py starts the PostgreSQL server
FORKCAST = Path(sys.executable).parent / "forkcast"
HOURS_A_YEAR = 8_760


def make_input(rows: int, path: Path) -> int:
    """The prepared real rows, repeated a year apart until there are `rows`; written to `path` (Parquet)."""
    import pandas as pd

    from forkcast.config import load_params
    from forkcast.data.prepare import build_features, load_raw

    dataset = load_params(ROOT / "params.yaml").dataset
    prepared = build_features(load_raw(ROOT / dataset.file, dataset), dataset)
    copies = -(-rows // len(prepared))
    shifted = [
        prepared.assign(timestamp=prepared["timestamp"] + pd.Timedelta(hours=HOURS_A_YEAR * copy))
        for copy in range(copies)
    ]
    frame = pd.concat(shifted, ignore_index=True).head(rows)
    assert frame["timestamp"].is_unique
    frame.to_parquet(path, index=False)
    return len(frame)


def measured(args: list[str], env: dict[str, str], scratch: Path) -> dict[str, Any]:
    """One run, with the peak RSS of exactly its child (wait4 on its pid)."""
    out_path, err_path = scratch / "stdout.txt", scratch / "stderr.txt"
    started = time.perf_counter()
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        child = subprocess.Popen([str(FORKCAST), "score", *args], cwd=ROOT, env=env, stdout=out_file, stderr=err_file)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    out, err = out_path.read_text(), err_path.read_text()
    if child.returncode != 0:
        raise SystemExit(f"forkcast score failed:\n{out}\n{err[-3000:]}")
    added = re.search(r"^([\d,]+) predictions of .* added to .*; ([\d,]+) were there already; ([\d.]+)s", out, re.M)
    rate = re.findall(r"([\d,]+)/([\d,]+) rows \(([\d,]+) added\), ([\d,]+) rows/s", err)
    assert added, out
    return {
        "wall_seconds": round(seconds, 2),
        "added": int(added[1].replace(",", "")),
        "already": int(added[2].replace(",", "")),
        "loop_seconds": float(added[3]),
        "rows_per_second": int(rate[-1][3].replace(",", "")) if rate else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "stderr_tail": err.strip().splitlines()[-6:],
    }


@contextlib.contextmanager
def database(kind: str, scratch: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{scratch / 'predictions.db'}"
        return
    from tests.batch.postgres import server

    with server(durable=True) as url:
        yield url


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: version(name) for name in ("pandas", "sqlalchemy", "psycopg", "onnxruntime")},
        "load_average": os.getloadavg(),
    }


def git_commit() -> str | None:
    command = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--bento", help="bento tag (default: the last build, outputs/build/build.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scoring.json")
    parser.add_argument("--make-input", type=Path, help=argparse.SUPPRESS)  # the child that writes the input
    args = parser.parse_args()
    if args.make_input:
        print(make_input(args.rows, args.make_input))
        return 0
    bento = args.bento or json.loads((ROOT / "outputs" / "build" / "build.json").read_text())["bento"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "DO_NOT_TRACK": "true"}
    env.pop("FORKCAST_SCORE_DATABASE_URL", None)
    results = []
    with tempfile.TemporaryDirectory(prefix="forkcast-bench-scoring-") as directory:
        scratch = Path(directory)
        source = scratch / "input.parquet"
        # In a child: this process stays small (a child's ru_maxrss starts from its parent's RSS at the fork).
        made = subprocess.run([sys.executable, __file__, "--make-input", str(source), "--rows", str(args.rows)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        rows = int(made.stdout.strip())
        command = ["--input", str(source), "--bento", bento, "--chunk-rows", str(args.chunk_rows)]
        for kind in args.databases:
            with database(kind, scratch) as url:
                first = measured([*command, "--database-url", url], env, scratch)
                retry = measured([*command, "--database-url", url], env, scratch)
            assert (first["added"], retry["added"], retry["already"]) == (rows, 0, rows), (first, retry)
            results.append({"database": kind, "rows": rows, "first": first, "retry": retry})
            print(f"{kind}: {first}\n  retry: {retry}", file=sys.stderr)
    record = {
        "bento": bento,
        "rows": rows,
        "chunk_rows": args.chunk_rows,
        "commit": git_commit(),
        "machine": machine(),
        "memory": "peak RSS of each run's own child (ru_maxrss via os.wait4), interpreter, imports and input included",
        "orchestrator_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| database | rows | first run: wall s | scoring loop rows/s | peak MB | retry: wall s | rows added |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        first, retry = result["first"], result["retry"]
        print(f"| {result['database']} | {result['rows']:,} | {first['wall_seconds']} | {first['rows_per_second']:,} | "
              f"{first['peak_rss_mb']:,.0f} | {retry['wall_seconds']} | {retry['added']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
