"""Where each stage writes, relative to the project root (the working directory, as for DVC)."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
OUTPUTS = Path("outputs")

VALIDATION_DIR = OUTPUTS / "validation"
VALIDATION_JSON = VALIDATION_DIR / "report.json"
VALIDATION_MD = VALIDATION_DIR / "report.md"

PREPARED_DIR = OUTPUTS / "prepared"
SPLITS = ("train", "validation", "test")
PREPARED_INPUTS = PREPARED_DIR / "inputs.json"  # the model's input contract, as prepared

MODEL_DIR = OUTPUTS / "model"
MODEL_PICKLE = MODEL_DIR / "model.joblib"
MODEL_ONNX = MODEL_DIR / "model.onnx"
MODEL_METADATA = MODEL_DIR / "metadata.json"

EVALUATION_DIR = OUTPUTS / "evaluation"
METRICS_JSON = EVALUATION_DIR / "metrics.json"
PREDICTIONS_CSV = EVALUATION_DIR / "predictions.csv"
ERROR_BY_CYCLE_CSV = EVALUATION_DIR / "error_by_cycle.csv"  # through the natural cycle: the day of hourly data
ERROR_BY_MONTH_CSV = EVALUATION_DIR / "error_by_month.csv"
BACKTEST_JSON = EVALUATION_DIR / "backtest.json"  # the rolling-origin backtest the gate judges
BACKTEST_CSV = EVALUATION_DIR / "backtest.csv"

SERVED_DIR = OUTPUTS / "served"  # the model that is built and served: refit on all rows (train.refit_on_all)
SERVED_PICKLE = SERVED_DIR / "model.joblib"
SERVED_ONNX = SERVED_DIR / "model.onnx"
SERVED_METADATA = SERVED_DIR / "metadata.json"

REGISTRY_DIR = OUTPUTS / "registry"
GATE_JSON = REGISTRY_DIR / "gate.json"
GATE_MD = REGISTRY_DIR / "gate.md"
OPEN_RUN = REGISTRY_DIR / "open-run.json"  # per tracking server, the run of a register that has not ended (yet)

LABELS_DIR = OUTPUTS / "labels"  # true values of served requests, per environment (`forkcast replay` writes them)

DATA_DVC = Path("data.dvc")
DVC_LOCK = Path("dvc.lock")
LOCAL_MLFLOW_DIR = Path(".mlflow")


def prepared_split(name: str) -> Path:
    return PREPARED_DIR / f"{name}.parquet"
