"""The model: training, evaluation, ONNX export, tracking and the quality gate."""
