"""INT8 rewriting: calibration, SmoothQuant migration, static/dynamic QDQ quantization, accuracy
fallback."""
