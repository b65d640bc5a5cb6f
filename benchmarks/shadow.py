"""What a shadow challenger costs the service: latency and throughput with and without one.

    python benchmarks/shadow.py [--seconds 10] [--batches 30] [--rounds 2] [--out benchmarks/results/shadow-<time>.json]

Needs `wrk` and the pipeline's outputs (`dvc repro`). Three bentos of the same served model
(`outputs/served/`) are built into a temporary BentoML store, so the project's `.bentoml/` is left as it was:

- alone: the model, as `forkcast build` builds it;
- shadow (ONNX): the same, with the evaluated model (`outputs/model/`, fitted on the training split: a genuinely
  different model) as its challenger, scored through ONNX Runtime like the model;
- shadow (scikit-learn): the same challenger without its ONNX export, so it scores through the scikit-learn pipeline,
  about 100 times slower per row: what a slow challenger costs.

Each is served and measured exactly as `benchmarks/serving.py` measures the service (2 workers, one scoring thread
each, wrk on the same 2 cores: 1-row p50/p99 and req/s on 1 connection, req/s on 8, 1,000-row requests one after
another), in turn, `--rounds` times (alternating, so a machine that gets busier part-way skews all alike). After each
run, the service's /metrics tell how many requests the challenger scored, failed or skipped (its queue full).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx
import joblib
import pandas as pd
from pipeline import git_commit, machine  # benchmarks/pipeline.py, next to this script
from serving import (  # benchmarks/serving.py, next to this script
    BATCH_ROWS,
    NO_TELEMETRY,
    WARM_UP_SECONDS,
    Server,
    ServerError,
    agreement,
    batch_latency,
    cell,
    free_port,
    running,
    server_env,
    write_wrk_script,
    wrk,
)
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
SERVED, EVALUATED = ROOT / "outputs" / "served", ROOT / "outputs" / "model"
TEST_SPLIT = ROOT / "outputs" / "prepared" / "test.parquet"
SHADOW_METRIC = re.compile(r'^forkcast_shadow_requests_total\{outcome="(\w+)"\} (\S+)$', re.MULTILINE)


def source_of(directory: Path, version: str, *, onnx: bool = True) -> Any:
    """A model of the pipeline's outputs as the build takes it."""
    from forkcast import atomic
    from forkcast.serving import build

    metadata = atomic.read_json(directory / "metadata.json")
    pipeline_bytes = (directory / "model.joblib").read_bytes()
    return build.ModelSource(
        pipeline=joblib.load(io.BytesIO(pipeline_bytes)),
        pipeline_bytes=pipeline_bytes,
        onnx=(directory / "model.onnx").read_bytes() if onnx else None,
        inputs=build.inputs_of(metadata, str(directory)),
        lineage={"model_name": "forkcast-demand", "model_version": version, "gate": "eligible"},
    )


def build_bentos(scratch: Path) -> dict[str, tuple[str, str, str | None]]:
    """The three bentos, in the temporary store: name -> (bento, model, challenger)."""
    from forkcast.config import load_params
    from forkcast.serving import build

    params = load_params(ROOT / "params.yaml")
    champion = source_of(SERVED, "1")
    golden = build.golden_cases(champion, pd.read_parquet(TEST_SPLIT), params.smoke.golden_cases)
    bentos = {}
    for name, challenger in (
        ("alone", None),
        ("shadow (ONNX)", source_of(EVALUATED, "2")),
        ("shadow (scikit-learn)", source_of(EVALUATED, "3", onnx=False)),
    ):
        result = build.build(
            champion, golden, params, bentofile=ROOT / "bentofile.yaml", source_dir=ROOT / "src",
            output_dir=scratch / "build" / name.replace(" ", "-"), challenger=challenger,
        )  # fmt: skip
        bentos[name] = (result.bento_tag, result.model_tag, result.challenger_tag)
        print(f"{name}: {result.bento_tag} (challenger {result.challenger_tag})", flush=True)
    return bentos


def server_of(store: Path, scratch: Path, name: str, bento: tuple[str, str, str | None]) -> Server:
    from forkcast.serving import deploy

    tag, model, challenger = bento
    port = free_port()
    directory = scratch / name.replace(" ", "-")
    env = server_env(
        **deploy.server_environment(
            store, home=directory / "bentoml", bento=tag, model=model, environment="benchmark",
            inference_log=str(directory / "inference-log"), challenger=challenger,
        )
    )  # fmt: skip
    command = [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    return Server(name, command, env, port, "/readyz", "/predict", "records")


def shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {outcome: float(value) for outcome, value in SHADOW_METRIC.findall(text)}


def measure(server: Server, scratch: Path, records: list[dict[str, Any]], expected: Any, args: Any) -> dict[str, Any]:
    url = server.url + server.predict_path
    script = write_wrk_script(scratch, server.name.replace(" ", "-"), server.body(records[:1]))
    batch_body = server.body(records[:BATCH_ROWS])
    with running(server, scratch / f"{server.name.replace(' ', '-')}.log") as (pid, _):
        difference = agreement(url, batch_body, expected)
        wrk(url, script, 8, WARM_UP_SECONDS, pid)
        c1 = wrk(url, script, 1, args.seconds, pid)
        c8 = wrk(url, script, 8, args.seconds, pid)
        batch = batch_latency(url, batch_body, args.batches, pid)
        time.sleep(1.0)  # the challenger's last batch
        counts = shadow_counts(server.url)
    result = {"c1": c1, "c8": c8, "batch": batch, "shadow": counts, "max_abs_difference_vs_sklearn": difference}
    print(
        f"{server.name}: p50 {c1['latency_ms']['50']:.2f} ms, {c1['requests_per_second']:.0f} req/s at c=1, "
        f"{c8['requests_per_second']:.0f} at c=8, 1,000 rows {batch['p50_ms']:.1f} ms; challenger {counts or 'none'}",
        flush=True,
    )
    return result


def cpu_per_request(run: dict[str, Any]) -> float:
    """The server's CPU milliseconds (all its processes) per answered request: what a challenger adds, even when other
    programs on the machine make the throughput itself unsteady."""
    return float(run["cpu_seconds"]["server"] * 1e3 / max(1, run["requests"]))


def medians(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: the median of each figure over the rounds, per configuration."""
    import statistics

    header = ["", "1-row p50 ms", "req/s c=1", "req/s c=8", "CPU ms/request c=8", "1,000-row ms"]
    lines = ["| " + " | ".join(header) + " |", "| --- " + "| ---: " * (len(header) - 1) + "|"]
    for name, results in runs.items():
        figures = [
            statistics.median(r["c1"]["latency_ms"]["50"] for r in results),
            statistics.median(r["c1"]["requests_per_second"] for r in results),
            statistics.median(r["c8"]["requests_per_second"] for r in results),
            statistics.median(cpu_per_request(r["c8"]) for r in results),
            statistics.median(r["batch"]["p50_ms"] for r in results),
        ]
        shown = [f"{value:,.{digits}f}" for value, digits in zip(figures, (2, 0, 0, 2, 1), strict=True)]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per configuration and round."""
    header = ["", "1-row p50 ms", "1-row p99 ms", "req/s c=1", "req/s c=8", "CPU ms/request c=8", "1,000-row ms",
              "scored / skipped"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- " + "| ---: " * (len(header) - 1) + "|"]
    for name, results in runs.items():
        for result in results:
            c1, c8, batch, counts = result["c1"], result["c8"], result["batch"], result["shadow"]
            shadow = f"{counts.get('scored', 0):,.0f} / {counts.get('skipped', 0):,.0f}" if counts else "–"
            cells = [cell(c1["latency_ms"].get("50"), 2, c1), cell(c1["latency_ms"].get("99"), 2, c1),
                     cell(c1["requests_per_second"], 0, c1), cell(c8["requests_per_second"], 0, c8),
                     cell(cpu_per_request(c8), 2, c8), cell(batch["p50_ms"], 1, batch), shadow]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration at c=1 and at c=8")
    parser.add_argument("--batches", type=int, default=30, help=f"sequential {BATCH_ROWS:,}-row requests")
    parser.add_argument("--rounds", type=int, default=1, help="times each configuration is measured, alternating")
    parser.add_argument("--out", type=Path, help="JSON result (default: benchmarks/results/shadow-<UTC time>.json)")
    args = parser.parse_args()
    os.environ.update(NO_TELEMETRY)
    started_at = dt.datetime.now(dt.UTC)
    out = args.out or ROOT / "benchmarks" / "results" / f"shadow-{started_at:%Y%m%dT%H%M%SZ}.json"
    with tempfile.TemporaryDirectory(prefix="forkcast-shadow-") as directory:
        scratch = Path(directory)
        store = scratch / "store"
        os.environ["BENTOML_HOME"] = str(store)  # before bentoml is imported: the project's store stays untouched
        bentos = build_bentos(scratch)
        pipeline = joblib.load(SERVED / "model.joblib")
        frame = pd.read_parquet(TEST_SPLIT, columns=list(pipeline.feature_names_in_))
        records = cast("list[dict[str, Any]]", frame.to_dict(orient="records"))
        with threadpool_limits(limits=1):
            expected = pipeline.predict(frame.head(BATCH_ROWS))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in bentos}
        for _ in range(args.rounds):
            for name, bento in bentos.items():
                try:
                    runs[name].append(measure(server_of(store, scratch, name, bento), scratch, records, expected, args))
                except (ServerError, httpx.HTTPError) as error:
                    print(f"{name}: FAILED: {error}", file=sys.stderr, flush=True)
                    return 1
    record = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "settings": {"wrk_seconds": args.seconds, "batches": args.batches, "rounds": args.rounds},
        "bentos": {name: dict(zip(("bento", "model", "challenger"), tag, strict=True)) for name, tag in bentos.items()},
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\n{table(runs)}\n\nmedians over {args.rounds} rounds:\n\n{medians(runs)}\n\nresult in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
