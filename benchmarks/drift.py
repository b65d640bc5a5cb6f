"""Wall time and peak memory of `forkcast drift` at 10k, 100k and 1M logged records; and its calibration.

    python benchmarks/drift.py [--sizes 10000 100000 1000000] [--out benchmarks/results/drift.json]
    python benchmarks/drift.py --calibrate [--out benchmarks/results/drift-calibration.json]

Timing. A temporary directory is laid out like a project that has run `dvc repro`: params.yaml and
dataset.yaml, the training split of the declared data (`outputs/prepared/train.parquet`), a model fitted on
it, its metadata and test metrics. For each size an inference log of one day is written in the service's
layout (`date=YYYY-MM-DD/part-*.parquet`, the InferenceLog schema, files of 20,000 rows as its writer flushes
them): records resampled from the real features with the model's predictions, in requests of 1-24 records
with 32-character request ids, 1% of the requests smoke tests. Then the drift job's own functions run in a
fresh subprocess (this script with `--task run`), as `forkcast drift` calls them: read the window, load the
reference and the model's predictions on it, analyse (quality, sample, Evidently), write the report.

- memory: the peak RSS of that subprocess (`ru_maxrss` from `os.wait4` on exactly that child), interpreter and
  imports included; `import_rss_mb` in the JSON is the floor after the imports;
- seconds: the job's work inside the child, per step; `process_seconds` adds interpreter start-up and imports
  (evidently alone takes ~5 s to import).

Each size runs with `monitor.max_rows` from params.yaml (the bounded strategy) and, above it, once more with
no bound (`max_rows` = all rows) to show what the sample saves and how little it moves the distances.

Calibration (`--calibrate`, in this process), for whatever dataset.yaml declares: per-feature distances
with the same Evidently functions and settings the job uses, for windows that should not drift (the other
half of the first `--reference-months` months, for a model of one half) and windows that should (each later
month, for a model of those first months), and the error of labelled windows after training. The thresholds
in params.yaml (`monitor`) come from these figures; benchmarks/README.md (Drift) has the table. After
swapping in other data, run it and set the thresholds between the two groups (README, Make it yours).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import vm_hwm_mb  # benchmarks/pipeline.py, next to this script

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
UNTIL = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
FILE_ROWS = 20_000  # InferenceLog's flush_rows: how many records one file holds at most
SMOKE_SHARE = 0.01


# --- the project and the log ---------------------------------------------------------------------------------


def make_project(workdir: Path) -> None:
    """params.yaml, the training split of the real data, a model fitted on it, its metadata and test metrics."""
    import joblib

    from forkcast import paths
    from forkcast.config import load_params
    from forkcast.data.prepare import build_features, load_raw, split_by_time, write_splits
    from forkcast.model import lineage
    from forkcast.model.estimator import fit, predict
    from forkcast.model.metrics import regression_metrics

    for name in ("params.yaml", "dataset.yaml"):
        shutil.copy(ROOT / name, workdir / name)
    os.chdir(workdir)
    params = load_params()
    dataset, inputs = params.dataset, params.dataset.inputs()
    splits = split_by_time(build_features(load_raw(ROOT / dataset.file, dataset), dataset), params.split)
    write_splits(splits, {name: paths.prepared_split(name) for name in paths.SPLITS}, inputs, paths.PREPARED_INPUTS)
    pipeline = fit(params.train, splits.train, inputs)
    paths.SERVED_DIR.mkdir(parents=True, exist_ok=True)  # the model the drift job compares with
    joblib.dump(pipeline, paths.SERVED_PICKLE)
    metadata = {
        "data_hash": lineage.data_hash(ROOT / "data.dvc"),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "splits": {"train": {"rows": len(splits.train), "start": splits.train["timestamp"].min().isoformat()}},
        "inputs": inputs.model_dump(mode="json"),
    }
    paths.SERVED_METADATA.write_text(json.dumps(metadata))
    paths.EVALUATION_DIR.mkdir(parents=True, exist_ok=True)
    test = regression_metrics(splits.test[dataset.target], predict(pipeline, splits.test, inputs.target))
    paths.METRICS_JSON.write_text(json.dumps({"model": test}))


def write_log(workdir: Path, sink: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """One day of logged records in the service's layout; how many and how many were smoke traffic."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forkcast import paths
    from forkcast.config import load_params
    from forkcast.model.estimator import predict
    from forkcast.model.train import load_pipeline
    from forkcast.serving.inference_log import log_schema

    os.chdir(workdir)
    inputs = load_params().dataset.inputs()
    schema = log_schema(inputs)
    year = pd.concat([pd.read_parquet(paths.prepared_split(name)) for name in paths.SPLITS], ignore_index=True)
    rng = np.random.default_rng(seed)
    records = year.iloc[rng.integers(0, len(year), size=rows)].reset_index(drop=True)
    predictions = predict(load_pipeline(paths.SERVED_PICKLE), records, inputs.target).to_numpy(np.float32)
    sizes = rng.integers(1, 25, size=rows)  # more requests than needed; cut below
    starts = np.concatenate([[0], np.cumsum(sizes)])
    starts = starts[starts < rows]
    requests = len(starts)
    request_of = np.repeat(np.arange(requests), np.diff(np.append(starts, rows)))
    smoke = rng.random(requests) < SMOKE_SHARE
    ids = np.array([("smoke-" if s else "") + rng.bytes(16).hex() for s in smoke], dtype=object)
    seconds = np.sort(rng.uniform(0, 86_400 - 1, size=requests))
    stamps = pd.to_datetime(UNTIL - dt.timedelta(days=1)) + pd.to_timedelta(seconds[request_of], unit="s")
    table = pa.table(
        {
            "timestamp": pa.array(stamps.floor("ms")).cast(pa.timestamp("ms", tz="UTC")),
            "request_id": pa.array(ids[request_of], pa.string()),
            "position": pa.array(np.arange(rows) - starts[request_of], pa.int32()),
            "model_version": pa.array(["1"] * rows, pa.string()),
            "environment": pa.array(["production"] * rows, pa.string()),
            **{name: pa.array(records[name]).cast(schema.field(name).type) for name in inputs.names},
            "prediction": pa.array(predictions, pa.float32()),
        },
        schema=schema,
    )
    directory = sink / f"date={(UNTIL - dt.timedelta(days=1)).date().isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    for number, begin in enumerate(range(0, rows, FILE_ROWS)):
        pq.write_table(table.slice(begin, FILE_ROWS), directory / f"part-{number:05d}.parquet")
    return {"rows": rows, "smoke_rows": int(smoke[request_of].sum()), "files": -(-rows // FILE_ROWS)}


# --- one drift run, in a child process --------------------------------------------------------------------------


def run_drift(workdir: Path, sink: Path, max_rows: int) -> dict[str, Any]:
    """The job's steps as `forkcast drift` runs them, each timed; imports happen before the clock."""
    import evidently  # noqa: F401  (its import is the big fixed cost: outside the clock)
    import joblib  # noqa: F401
    import sklearn  # noqa: F401

    from forkcast import paths
    from forkcast.config import load_params
    from forkcast.monitoring.drift.analysis import Context, analyse
    from forkcast.monitoring.drift.reference import load_reference, production_model
    from forkcast.monitoring.drift.report import write_outputs
    from forkcast.monitoring.drift.traffic import Window, read_traffic

    os.chdir(workdir)
    params = load_params()
    monitor = params.monitor.model_copy(update={"max_rows": max_rows})
    window = Window.ending(UNTIL, monitor.window_days)
    context = Context("production", str(sink), window, monitor, params.dataset)
    import_rss_mb = vm_hwm_mb()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    traffic = read_traffic(str(sink), window, params.dataset.inputs())
    seconds["read"] = time.perf_counter() - started
    arrow_mb = traffic.table.nbytes / 2**20
    mark = time.perf_counter()
    reference = load_reference(paths.prepared_split("train"), production_model("production"))
    seconds["reference"] = time.perf_counter() - mark
    mark = time.perf_counter()
    outcome, snapshot = analyse(context, traffic, reference, None)
    seconds["analyse"] = time.perf_counter() - mark
    mark = time.perf_counter()
    write_outputs(paths.OUTPUTS / "drift" / f"bench-{traffic.rows}-{max_rows}", outcome, snapshot)
    seconds["write"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return {
        "seconds": seconds,
        "import_rss_mb": import_rss_mb,
        "window_arrow_mb": arrow_mb,
        "rows": outcome["rows"],
        "verdict": outcome["verdict"],
        "input_share": outcome["input_drift"]["share"],
        "scores": {row["feature"]: row["score"] for row in outcome["input_drift"]["per_feature"]},
        "prediction_score": outcome["prediction_drift"]["score"],
    }


def child_main(task: str, workdir: Path, rows: int, max_rows: int) -> int:
    sink = workdir / "logs" / str(rows)
    if task == "project":
        make_project(workdir)
        result: dict[str, Any] = {}
    elif task == "log":
        result = write_log(workdir, sink, rows)
    else:
        result = run_drift(workdir, sink, max_rows)
    result["vm_hwm_mb"] = vm_hwm_mb()
    result["load_average_1min"] = os.getloadavg()[0]
    (workdir / f"{task}-{rows}-{max_rows}.json").write_text(json.dumps(result, default=str))
    return 0


def run_child(task: str, workdir: Path, rows: int = 0, max_rows: int = 0) -> dict[str, Any]:
    """One task in a fresh child; its peak RSS is its own (wait4 on exactly its pid)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--task", task, "--workdir", str(workdir)]
    command += ["--rows", str(rows), "--max-rows", str(max_rows)]
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true", "PYTHONPYCACHEPREFIX": str(workdir / "pyc")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    with open(workdir / f"{task}-{rows}-{max_rows}.log", "w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (workdir / f"{task}-{rows}-{max_rows}.log").read_text()[-3000:]
        raise RuntimeError(f"{task} failed in {workdir}:\n{tail}")
    result = json.loads((workdir / f"{task}-{rows}-{max_rows}.json").read_text())
    peak_mb = usage.ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)
    return {"task": task, "process_seconds": time.perf_counter() - started, "peak_rss_mb": peak_mb, **result}


# --- the timing benchmark ---------------------------------------------------------------------------------------


def default_max_rows() -> int:
    import yaml

    return int(yaml.safe_load((ROOT / "params.yaml").read_text())["monitor"]["max_rows"])


def bench(sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    bound = default_max_rows()
    run_child("project", workdir)
    run_child("log", workdir, 1_000)  # a discarded warm-up run: it compiles the bytecode cache
    run_child("run", workdir, 1_000, bound)
    results = []
    for rows in sorted(sizes):
        log = run_child("log", workdir, rows)
        runs = [run_child("run", workdir, rows, bound)]
        if rows > bound:
            runs.append(run_child("run", workdir, rows, rows))
        for run in runs:
            label = "all rows" if run["rows"]["compared"] == run["rows"]["in_window"] else "sampled"
            print(
                f"  {rows:>9,} logged  {label:<8} {run['seconds']['total']:6.1f} s "
                f"(read {run['seconds']['read']:.1f}, analyse {run['seconds']['analyse']:.1f}) "
                f"{run['peak_rss_mb']:6.0f} MB  process {run['process_seconds']:5.1f} s",
                flush=True,
            )
        results.append({"rows": rows, "log": log, "runs": runs})
    return results


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| logged rows | compared | read s | reference s | analyse s | write s | total s | process s | peak MB "
        "| window in Arrow MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for run in result["runs"]:
            s, rows = run["seconds"], run["rows"]
            compared = f"{rows['compared']:,}" + (" (sample)" if rows["sampled"] else " (all)")
            lines.append(
                f"| {result['rows']:,} | {compared} | {s['read']:.2f} | {s['reference']:.2f} | {s['analyse']:.2f} "
                f"| {s['write']:.2f} | {s['total']:.2f} | {run['process_seconds']:.1f} | {run['peak_rss_mb']:.0f} "
                f"| {run['window_arrow_mb']:.0f} |"
            )
    return "\n".join(lines)


def sampling_error(results: list[dict[str, Any]]) -> float | None:
    """The largest change of any distance between the sampled and the full comparison of the same window."""
    gaps = []
    for result in results:
        if len(result["runs"]) == 2:
            sampled, full = result["runs"]
            gaps += [abs(sampled["scores"][name] - full["scores"][name]) for name in full["scores"]]
            gaps.append(abs(sampled["prediction_score"] - full["prediction_score"]))
    return max(gaps) if gaps else None


# --- calibration -----------------------------------------------------------------------------------------------


def distances(reference: pd.DataFrame, current: pd.DataFrame, kinds: Mapping[str, str]) -> dict[str, float]:
    """Each feature's and the prediction's distance, with the functions and column types the job uses."""
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    from forkcast.serving.contract import PREDICTION

    scores = {}
    for name, kind in {**kinds, PREDICTION: "continuous"}.items():
        if kind == "discrete":
            scores[name] = jensenshannon_stat_test.func(reference[name], current[name], ColumnType.Categorical, 0.1)[0]
        else:
            scores[name] = wasserstein_stat_test.func(reference[name], current[name], ColumnType.Numerical, 0.1)[0]
    return {name: float(value) for name, value in scores.items()}


def calibrate(project: Path = ROOT, halves: int = 30, seed: int = 0, reference_months: int = 2) -> dict[str, Any]:
    """Distances and errors for windows that should not drift and windows that should, on the declared data."""
    import numpy as np

    from forkcast.config import load_params
    from forkcast.data.prepare import build_features, load_raw, split_by_time
    from forkcast.model.estimator import fit, predict
    from forkcast.model.metrics import regression_metrics
    from forkcast.serving.contract import PREDICTION

    params = load_params(project / "params.yaml")
    dataset, inputs, monitor = params.dataset, params.dataset.inputs(), params.monitor
    target, kinds = dataset.target, dataset.drift_kinds()
    table = build_features(load_raw(project / dataset.file, dataset), dataset)
    day = (table["timestamp"].dt.normalize() - table["timestamp"].min().normalize()).dt.days + 1
    month = table["timestamp"].dt.to_period("M")
    first_months = month <= month.min() + (reference_months - 1)
    rng = np.random.default_rng(seed)
    cases: list[dict[str, Any]] = []

    def case(group: str, name: str, model: Any, reference: pd.DataFrame, current: pd.DataFrame) -> None:
        reference, current = reference.copy(), current.copy()
        reference[PREDICTION] = predict(model, reference, inputs.target)
        current[PREDICTION] = predict(model, current, inputs.target)
        scores = distances(reference, current, kinds)
        drifted = [feature for feature in kinds if scores[feature] >= monitor.feature_threshold]
        rmse = regression_metrics(current[target], current[PREDICTION])["rmse"]
        cases.append(
            {"group": group, "case": name, "rows": len(current), "scores": scores, "drifted": drifted,
             "share": len(drifted) / len(kinds), "rmse": rmse}
        )  # fmt: skip

    span = f"the first {reference_months} months"
    even, odd = table[first_months & (day % 2 == 0)], table[first_months & (day % 2 == 1)]
    even_model = fit(params.train, even, inputs)
    case(f"same season: odd days of {span} vs a model of the even days", "odd days", even_model, even, odd)
    days = np.unique(day[first_months])
    for number in range(halves):
        chosen = rng.permutation(days)[: (len(days) + 1) // 2]
        reference, current = table[first_months & day.isin(chosen)], table[first_months & ~day.isin(chosen)]
        model = fit(params.train, reference, inputs)
        case(f"same season: random halves of the days of {span}", f"half {number}", model, reference, current)
    for period in sorted(month[~first_months].unique()):
        current = table[month == period]
        case(f"later months vs the model of the even days of {span}", str(period), even_model, even, current)
    splits = split_by_time(table, params.split)
    pipeline_model = fit(params.train, splits.train, inputs)
    later = table[table["timestamp"] > splits.train["timestamp"].max()]
    for period, current in later.groupby(later["timestamp"].dt.to_period("M")):
        case("after training: the pipeline's model vs later months", str(period), pipeline_model, splits.train, current)
    weeks = splits.train.groupby(splits.train["timestamp"].dt.to_period("W"))
    for number, (period, current) in enumerate(weeks):
        if number % 5 == 0:  # a week every five, across the training period
            group = "inside training: the pipeline's model vs one of its own training weeks"
            case(group, str(period), pipeline_model, splits.train, current)

    test_rmse = regression_metrics(splits.test[target], predict(pipeline_model, splits.test, inputs.target))["rmse"]
    errors = later.assign(prediction=predict(pipeline_model, later, inputs.target))
    cycle = dataset.time.frequency.rows_per_cycle
    ratios = {
        unit: [
            regression_metrics(frame[target], frame["prediction"])["rmse"] / test_rmse
            for _, frame in errors.groupby(errors["timestamp"].dt.to_period(unit))
            if len(frame) >= cycle
        ]
        for unit in ("D", "W", "M")
    }
    return {
        "dataset": dataset.name,
        "thresholds": monitor.model_dump(),
        "cases": cases,
        "pipeline_test_rmse": test_rmse,
        "rmse_over_test_rmse_after_training": {
            unit: {
                "min": min(values),
                "median": float(np.median(values)),
                "p95": float(np.quantile(values, 0.95)),
                "max": max(values),
                "windows": len(values),
            }
            for unit, values in ratios.items()
            if values
        },
        "first_months_model_rmse_over_odd_days": {
            c["case"]: c["rmse"] / cases[0]["rmse"] for c in cases if c["group"].startswith("later months")
        },
    }


def calibration_table(result: dict[str, Any]) -> str:
    import numpy as np

    monitor = result["thresholds"]
    lines = [
        "| windows | n | drift share min / median / max | flagged (share) | prediction distance min / median / max "
        "| flagged (prediction) |",
        "| --- | ---: | --- | ---: | --- | ---: |",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in result["cases"]:
        groups.setdefault(case["group"], []).append(case)
    for group, cases in groups.items():
        shares = np.array([c["share"] for c in cases])
        predictions = np.array([c["scores"]["prediction"] for c in cases])
        flagged = int((shares >= monitor["drift_share"]).sum())
        flagged_prediction = int((predictions >= monitor["prediction_threshold"]).sum())
        lines.append(
            f"| {group} | {len(cases)} | {shares.min():.2f} / {np.median(shares):.2f} / {shares.max():.2f} "
            f"| {flagged} | {predictions.min():.2f} / {np.median(predictions):.2f} / {predictions.max():.2f} "
            f"| {flagged_prediction} |"
        )
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="logged rows")
    parser.add_argument("--calibrate", action="store_true", help="the threshold calibration instead of timing")
    parser.add_argument(
        "--reference-months", type=int, default=2, help="calibration: the months a reference model learns (default 2)"
    )
    parser.add_argument(
        "--project", type=Path, default=ROOT, help="calibration: the project whose params.yaml and dataset.yaml to use"
    )
    parser.add_argument("--out", type=Path, help="JSON result (default: benchmarks/results/drift[-calibration].json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working directory")
    parser.add_argument("--task", choices=["project", "log", "run"], help=argparse.SUPPRESS)  # internal
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        return child_main(args.task, args.workdir, args.rows, args.max_rows)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
    }
    if args.calibrate:
        out = args.out or ROOT / "benchmarks/results/drift-calibration.json"
        record |= calibrate(args.project.resolve(), reference_months=args.reference_months)
        table = calibration_table(record)
    else:
        out = args.out or ROOT / "benchmarks/results/drift.json"
        workdir = Path(tempfile.mkdtemp(prefix="forkcast-drift-bench-"))
        try:
            results = bench(args.sizes, workdir)
        finally:
            if args.keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        record |= {
            "memory": "peak RSS of the drift run's own subprocess (ru_maxrss via os.wait4), imports included",
            "seconds": "the job's steps inside its subprocess; process_seconds adds start-up and imports",
            "max_rows": default_max_rows(),
            "largest_distance_change_from_sampling": sampling_error(results),
            "results": results,
        }
        table = markdown_table(results)
    record["total_seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print()
    print(table)
    if record.get("largest_distance_change_from_sampling") is not None:
        print(f"\nlargest change of a distance from sampling: {record['largest_distance_change_from_sampling']:.4f}")
    print(f"\nTotal {record['total_seconds']:.0f} s; result in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
