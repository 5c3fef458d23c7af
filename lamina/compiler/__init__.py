"""The core: IR (``ir``), ONNX import (``frontend``), pass infrastructure (``pipeline``), and the
driver (``driver``: API and command line). The public API is :mod:`lamina`."""
