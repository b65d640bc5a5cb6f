"""Wall time and peak memory of each pipeline stage at growing data sizes.

    python benchmarks/pipeline.py [--sizes 10000 100000 1000000] [--out benchmarks/results/pipeline.json]

For each size, the bike example's real 2011 data (`data/bikeshare_hourly.csv`) is replicated forward in
time, year by year, into a temporary directory laid out like the project, and the project's own stage
functions run there, each in a fresh subprocess (this script with `--task STAGE`):

- memory: the peak resident set size (RSS) of that stage's process, interpreter and imports
  included (`ru_maxrss` from `os.wait4` on exactly that child; the JSON also has VmHWM and the
  RSS after imports, the floor);
- seconds: the wall time of the stage's own work inside the child (reading inputs, computing,
  writing outputs, lazy imports such as mlflow or skl2onnx), without interpreter start-up and the
  `forkcast` imports (`process_seconds` in the JSON includes them).

A small unmeasured warm-up run first compiles a bytecode cache (in the temporary directory),
creates the MLflow store (a sqlite file there too) and promotes a production model, so the
measured `register` gates a candidate against production as in a project that has run before.
Other processes on the machine skew the seconds (HistGradientBoosting's OpenMP threads badly so):
`--repeat N` keeps each stage's fastest time (and largest peak) of N runs; the JSON has every run
and the load average during it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from forkcast.config import Params

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("validate", "prepare", "train", "evaluate", "backtest", "refit", "register")
SEASON_STARTS = ((3, 21, 2), (6, 21, 3), (9, 23, 4), (12, 21, 1))  # (month, day, season), as in the 2011 data
WARM_UP_ROWS = 2_000
STAGE_IMPORTS = {
    "validate": ("data.validation",),
    "prepare": ("data.prepare",),
    "train": ("data.prepare", "model.train"),
    "evaluate": ("data.prepare", "model.train", "model.evaluate"),
    "backtest": ("data.prepare", "model.backtest"),
    "refit": ("data.prepare", "model.train", "model.refit"),
    "register": ("data.prepare", "model.train", "model.registry"),
}


# --- data --------------------------------------------------------------------------------------------------


def season_of(dates: pd.Series) -> pd.Series:
    """1 winter .. 4 fall, switching on the dates the 2011 data switches (21 Mar, 21 Jun, 23 Sep, 21 Dec)."""
    import pandas as pd

    month_day = dates.dt.month * 100 + dates.dt.day
    season = pd.Series(1, index=dates.index)  # winter until the first switch
    for month, day, value in SEASON_STARTS:
        season[month_day >= month * 100 + day] = value
    return season


def replicate(source: pd.DataFrame, rows: int, start_date: dt.date, month_names: tuple[str, ...]) -> pd.DataFrame:
    """The first `rows` hours of the year in `source` repeated in the following calendar years.

    Copy k keeps each row's month and day of month in year start+k (so `day` grows by 365 or 366 a year),
    and its hour, weather, counts and holiday flag; weekday, workingday, mnth and season are recomputed
    from the new date. The source year has no 29 February, so leap days are simply absent.
    """
    import pandas as pd

    copies = math.ceil(rows / len(source))
    offsets = [(dt.date(start_date.year + k, 1, 1) - dt.date(start_date.year, 1, 1)).days for k in range(copies)]
    table = pd.concat([source.assign(day=source["day"] + offset) for offset in offsets], ignore_index=True)
    table = table.head(rows).copy()
    dates = pd.Timestamp(start_date) + pd.to_timedelta(table["day"] - 1, unit="D")
    table["weekday"] = ((dates.dt.dayofweek + 1) % 7).astype("int64")  # 0 = Sunday
    table["workingday"] = (~table["weekday"].isin([0, 6]) & (table["holiday"] == 0)).astype(int)
    table["mnth"] = dates.dt.month.map(dict(enumerate(month_names, start=1)))
    table["season"] = season_of(dates)
    return table


def make_workdir(workdir: Path, rows: int) -> None:
    import pandas as pd

    from forkcast.config import load_params

    params = load_params(ROOT / "params.yaml")
    for name in ("params.yaml", "dataset.yaml"):
        shutil.copy(ROOT / name, workdir / name)
    dataset = params.dataset
    raw = workdir / dataset.file
    raw.parent.mkdir(parents=True, exist_ok=True)
    source = pd.read_csv(ROOT / dataset.file)
    months = tuple(str(name) for name in dataset.columns["mnth"].categories or ())
    replicate(source, rows, dataset.time.origin or dt.date(2011, 1, 1), months).to_csv(raw, index=False)


# --- one stage, in a child process ------------------------------------------------------------------------


def load_settings(model: str | None) -> Params:
    from forkcast.config import load_params

    params = load_params(Path("params.yaml"))
    if model:
        params = params.model_copy(update={"train": params.train.model_copy(update={"model": model})})
    return params


def run_stage(stage: str, model: str | None) -> dict[str, Any]:
    """Run one stage in the current directory (a project-like working directory); return stage facts."""
    for module in STAGE_IMPORTS[stage]:  # what the stage needs, imported before the clock starts
        importlib.import_module(f"forkcast.{module}")
    from forkcast import paths

    params = load_settings(model)
    import_rss_mb = vm_hwm_mb()  # the floor: interpreter, imports and settings
    splits_path = {name: paths.prepared_split(name) for name in paths.SPLITS}
    started = time.perf_counter()
    facts: dict[str, Any] = {}
    if stage == "validate":
        from forkcast.data import validation

        report = validation.validate_file(params.dataset.file, params.validate_, params.dataset)
        validation.write_report(report, paths.VALIDATION_JSON, paths.VALIDATION_MD)
        facts = {"rows": report.rows, "passed": report.passed, "failed": [c.name for c in report.failed_checks]}
    elif stage == "prepare":
        from forkcast.data import prepare

        raw = prepare.load_raw(params.dataset.file, params.dataset)
        splits = prepare.split_by_time(prepare.build_features(raw, params.dataset), params.split)
        prepare.write_splits(splits, splits_path, params.dataset.inputs(), paths.PREPARED_INPUTS)
        facts = {"rows": len(raw), "splits": {name: len(frame) for name, frame in splits.items()}}
    elif stage == "train":
        from forkcast.data import prepare
        from forkcast.model import lineage, train

        frames = {name: prepare.read_split(path) for name, path in splits_path.items()}
        model_ = train.train(params, frames, params.dataset.inputs(), lineage.data_hash(paths.DATA_DVC))
        train.save(model_, paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
        facts = {
            "model": params.train.model,
            "n_iter": getattr(model_.pipeline[-1], "n_iter_", None),
            "validation": model_.metadata["metrics"]["validation"],
            "onnx_max_gap_on_test": model_.metadata["onnx_max_gap_on_test"],
        }
    elif stage == "evaluate":
        from forkcast.data import prepare
        from forkcast.model import evaluate, train

        frames = {name: prepare.read_split(splits_path[name]) for name in ("train", "test")}
        pipeline = train.load_pipeline(paths.MODEL_PICKLE)
        inputs = params.dataset.inputs()
        result = evaluate.evaluate(pipeline, frames["train"], frames["test"], inputs, params.dataset.seasonal_keys)
        evaluate.save(
            result, paths.METRICS_JSON, paths.PREDICTIONS_CSV, paths.ERROR_BY_CYCLE_CSV, paths.ERROR_BY_MONTH_CSV
        )
        facts = {"test_rows": result.metrics["test_rows"], "model": result.metrics["model"]}
    elif stage in {"backtest", "refit", "register"}:
        facts = run_release_stage(stage, params, splits_path)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return {"seconds": time.perf_counter() - started, "import_rss_mb": import_rss_mb, **facts}


def run_release_stage(stage: str, params: Params, splits_path: dict[str, Path]) -> dict[str, Any]:
    """The stages after evaluation: the backtest, the refit and the registration with its gate."""
    from forkcast import paths

    if stage == "backtest":
        from forkcast.data import prepare
        from forkcast.model import backtest

        data = backtest.all_rows({name: prepare.read_split(path) for name, path in splits_path.items()})
        inputs = params.dataset.inputs()
        folds = backtest.make_folds(data["timestamp"], inputs.frequency, params.backtest)
        folded = backtest.backtest(params.train, data, inputs, folds, seasonal_keys=params.dataset.seasonal_keys)
        backtest.save(folded, paths.BACKTEST_JSON, paths.BACKTEST_CSV)
        facts = {"folds": len(folds), "model_rmse": folded["model"]["rmse"]}
    elif stage == "refit":
        from forkcast.data import prepare
        from forkcast.model import lineage, refit, train

        frames = {name: prepare.read_split(path) for name, path in splits_path.items()}
        evaluated = train.load(paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
        released = refit.refit(params, frames, params.dataset.inputs(), evaluated, lineage.data_hash(paths.DATA_DVC))
        train.save(released, paths.SERVED_PICKLE, paths.SERVED_ONNX, paths.SERVED_METADATA)
        facts = {"rows": released.metadata["fitted_on"]["rows"]}
    elif stage == "register":
        from forkcast import atomic
        from forkcast.data import prepare
        from forkcast.model import backtest, lineage, registry, train

        registration = registry.track_and_register(
            params=params,
            pipeline=train.load_pipeline(paths.SERVED_PICKLE),
            inputs=params.dataset.inputs(),
            data=backtest.all_rows({name: prepare.read_split(path) for name, path in splits_path.items()}),
            backtest=atomic.read_json(paths.BACKTEST_JSON),
            evaluation=atomic.read_json(paths.METRICS_JSON),
            metadata=atomic.read_json(paths.SERVED_METADATA),
            lineage=lineage.lineage(paths.DATA_DVC, paths.DVC_LOCK),
            artifacts=[paths.VALIDATION_JSON, paths.VALIDATION_MD, paths.SERVED_METADATA, paths.METRICS_JSON,
                       paths.BACKTEST_JSON, paths.SERVED_ONNX],
            local_dir=paths.LOCAL_MLFLOW_DIR,
            onnx=paths.SERVED_ONNX.read_bytes(),
        )  # fmt: skip
        registry.save_gate(registration, paths.GATE_JSON, paths.GATE_MD)
        facts = {"version": registration.version, "eligible": registration.verdict.eligible}
    return facts


def vm_hwm_mb() -> float | None:
    """This process's own peak RSS since exec (Linux), a cross-check of ru_maxrss."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def child_main(task: str, workdir: Path, rows: int | None, model: str | None) -> int:
    os.chdir(workdir)  # forkcast.paths are relative to the project root
    if task == "generate":
        started = time.perf_counter()
        make_workdir(workdir, rows or 0)
        result: dict[str, Any] = {"seconds": time.perf_counter() - started}
    elif task == "promote":
        from forkcast import atomic, paths
        from forkcast.model import registry

        version = str(atomic.read_json(paths.GATE_JSON)["version"])
        registry.promote(paths.LOCAL_MLFLOW_DIR, load_settings(model), version)
        result = {"seconds": 0.0, "version": version}
    else:
        result = run_stage(task, model)
    facts = {**result, "vm_hwm_mb": vm_hwm_mb(), "load_average_1min": os.getloadavg()[0]}  # others' load skews s
    Path(f"{task}.json").write_text(json.dumps(facts, default=str))
    if not result.get("passed", True):
        print(f"validation failed: {result['failed']}", file=sys.stderr)
        return 1
    return 0


# --- the benchmark ----------------------------------------------------------------------------------------


def child_env(root: Path, threads: int | None) -> dict[str, str]:
    env = os.environ | {
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",  # one store for the whole benchmark run
        "PYTHONPYCACHEPREFIX": str(root / "pycache"),  # compiled once (in the warm-up), outside the project
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if threads:  # OpenMP threads of HistGradientBoosting (and BLAS); unset = all cores, as the pipeline runs
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_child(task: str, workdir: Path, env: dict[str, str], rows: int | None, model: str | None) -> dict[str, Any]:
    """Run one task in a fresh child; its peak RSS is that child's own, from wait4 on exactly its pid."""
    command = [sys.executable, str(Path(__file__).resolve()), "--task", task, "--workdir", str(workdir)]
    command += (["--rows", str(rows)] if rows else []) + (["--model", model] if model else [])
    started = time.perf_counter()
    with open(workdir / f"{task}.log", "w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    process_seconds = time.perf_counter() - started
    if child.returncode != 0:
        tail = (workdir / f"{task}.log").read_text()[-3000:]
        raise RuntimeError(f"{task} failed in {workdir} (exit {child.returncode}):\n{tail}")
    result = json.loads((workdir / f"{task}.json").read_text())
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak_mb = usage.ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)
    return {"stage": task, "process_seconds": process_seconds, "peak_rss_mb": peak_mb, **result}


def bench_size(root: Path, rows: int, model: str | None, env: dict[str, str], repeat: int) -> dict[str, Any]:
    """Each stage `repeat` times in a row: the fastest time (the others add noise, not cost), the largest peak."""
    workdir = root / f"rows-{rows}"
    workdir.mkdir()
    generated = run_child("generate", workdir, env, rows, model)
    stages = []
    for stage in STAGES:
        runs = [run_child(stage, workdir, env, rows, model) for _ in range(repeat)]
        best = min(runs, key=lambda run: run["seconds"])
        best["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
        keys = ("seconds", "peak_rss_mb", "load_average_1min")
        stages.append({**best, "runs": [{key: run[key] for key in keys} for run in runs]})
        print(f"  {rows:>9,} rows  {stage:<9} {best['seconds']:7.2f} s  {best['peak_rss_mb']:7.0f} MB", flush=True)
    return {"rows": rows, "generate_seconds": generated["seconds"], "stages": stages}


def warm_up(root: Path, model: str | None, env: dict[str, str]) -> None:
    """A small discarded run: compiles the bytecode cache, creates the MLflow store and a production model,
    so the measured runs see a project that has run before (register then gates against production)."""
    workdir = root / "warm-up"
    workdir.mkdir()
    for task in ("generate", *STAGES, "promote"):
        run_child(task, workdir, env, WARM_UP_ROWS, model)


def growth_per_10x(small: tuple[int, float], large: tuple[int, float]) -> float:
    """How much a cost multiplies for each 10x more rows, between two sizes."""
    (n1, v1), (n2, v2) = small, large
    return (v2 / v1) ** (1 / math.log10(n2 / n1)) if v1 > 0 and n2 != n1 else float("nan")


def rows_label(rows: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % (size // 10) == 0:
            return f"{rows / size:g}{unit}"
    return f"{rows:,}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per stage: seconds and peak MB at each size, and the growth per 10x rows between sizes."""
    sizes = [r["rows"] for r in results]
    steps = [f"{rows_label(a)}→{rows_label(b)}" for a, b in itertools.pairwise(sizes)]
    header = ["stage", *[f"{rows_label(n)} s" for n in sizes], *[f"×s/10x {s}" for s in steps]]
    header += [*[f"{rows_label(n)} MB" for n in sizes], *[f"×MB/10x {s}" for s in steps]]
    lines = ["| " + " | ".join(header) + " |", "| --- " + "| ---: " * (len(header) - 1) + "|"]

    def factors(values: list[float]) -> list[str]:
        points = list(zip(sizes, values, strict=True))
        return [f"{growth_per_10x(a, b):.1f}" for a, b in itertools.pairwise(points)]

    def row(name: str, seconds: list[float], mb: list[float]) -> str:
        cells = [*(f"{s:.2f}" for s in seconds), *factors(seconds), *(f"{m:.0f}" for m in mb), *factors(mb)]
        return f"| {name} | " + " | ".join(cells) + " |"

    for stage in STAGES:
        picked = [next(s for s in r["stages"] if s["stage"] == stage) for r in results]
        lines.append(row(stage, [s["seconds"] for s in picked], [s["peak_rss_mb"] for s in picked]))
    totals = [sum(s["seconds"] for s in r["stages"]) for r in results]
    peaks = [max(s["peak_rss_mb"] for s in r["stages"]) for r in results]
    lines.append(row("all (sum s, max MB)", totals, peaks))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="rows per run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"), help="JSON result")
    parser.add_argument("--model", choices=["hist_gradient_boosting", "random_forest"], help="override train.model")
    parser.add_argument("--repeat", type=int, default=1, help="runs per stage: fastest time, largest peak")
    parser.add_argument("--threads", type=int, help="set OMP_NUM_THREADS for the stages (default: unset)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working directories")
    parser.add_argument("--task", choices=[*STAGES, "generate", "promote"], help=argparse.SUPPRESS)  # internal
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        return child_main(args.task, args.workdir, args.rows, args.model)

    # This process stays small (no pandas): a child's ru_maxrss counts its parent's RSS at the (v)fork.
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="forkcast-bench-"))
    env = child_env(root, args.threads)
    try:
        print(f"warm-up ({WARM_UP_ROWS:,} rows, not measured) in {root}", flush=True)
        warm_up(root, args.model, env)
        results = [bench_size(root, rows, args.model, env, args.repeat) for rows in sorted(args.sizes)]
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    record = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "repeat": args.repeat,
        "memory": "peak RSS of each stage's own subprocess (ru_maxrss via os.wait4), interpreter and imports included",
        "seconds": "wall time of the stage's work inside its subprocess; process_seconds adds start-up and imports",
        "orchestrator_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_seconds": time.perf_counter() - started,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print()
    print(markdown_table(results))
    print(f"\nTotal {record['total_seconds']:.0f} s; result in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
