"""The model's input columns: shared by the pipeline, the service contract and the ONNX export.

Kept free of heavy imports so that the serving code can use it without pandera.
"""

MONTH_NAMES = ("Jan", "Feb", "March", "April", "May", "June", "July", "Aug", "Sept", "Oct", "Nov", "Dec")
WEATHER = ("clear", "cloudy/misty", "light rain/snow", "heavy rain/snow")

# What a caller knows at prediction time.
NUMERIC_FEATURES = (
    "season", "month", "hr", "holiday", "weekday", "workingday", "temp", "atemp", "hum", "windspeed",
)  # fmt: skip
CATEGORICAL_FEATURES = ("weathersit",)
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
