"""The classic way to serve the model, a baseline for `serving.py`: Flask, joblib and a DataFrame per request.

    gunicorn -w 2 -b 127.0.0.1:8000 --chdir benchmarks flask_app:app

`POST /predict` with `{"records": [...]}` (the same body as the Forkcast service) answers
`{"predictions": [...]}` from the scikit-learn pipeline in `outputs/model/model.joblib`; no input
checks, no logging. `GET /health` answers once the worker has loaded the model.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import pandas as pd
from flask import Flask, Response, jsonify, request

MODEL = Path(__file__).resolve().parent.parent / "outputs" / "model" / "model.joblib"

app = Flask(__name__)
pipeline = joblib.load(MODEL)


@app.post("/predict")
def predict() -> Response:
    frame = pd.DataFrame(request.get_json()["records"])
    return jsonify(predictions=pipeline.predict(frame).tolist())


@app.get("/health")
def health() -> Response:
    return jsonify(status="ok")
