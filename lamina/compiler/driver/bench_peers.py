"""The peers ``lamina bench`` times beside Lamina: the runtimes and precisions users actually pick.

=======================  ==========  ===========================================================
engine                   precision   what runs
=======================  ==========  ===========================================================
``onnxruntime``          fp32        ONNX Runtime, ORT_ENABLE_ALL, on the ONNX file
``ort-int8-dynamic``     int8        ``onnxruntime.quantization.quantize_dynamic`` of the file
                                     (int8 weights, activations quantized per call)
``ort-int8-qdq``         int8        ``quantize_static`` QDQ (u8 activations, per-channel s8
                                     weights), calibrated on the benchmark's feed sets
``openvino``             default     OpenVINO's default CPU precision (bf16 on AMX CPUs)
``openvino-f32``         fp32        OpenVINO with ``INFERENCE_PRECISION_HINT=f32``
``openvino-nncf-int8``   int8        NNCF post-training INT8 of the same file (transformer preset)
``lamina-fp32``          fp32        a second Lamina artifact (``--lamina-fp32``), e.g. the fp32
                                     build of a model whose INT8 build is the main artifact
=======================  ==========  ===========================================================

Derived models (the quantized ones) are made once in the parent process, into the benchmark's
temporary directory, before any timing; every engine then runs in its own process. OpenVINO and
NNCF are the ``openvino`` extra of the package (``pip install lamina[openvino]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lamina.compiler.errors import UsageError

log = logging.getLogger(__name__)

PRECISION: dict[str, str] = {
    "onnxruntime": "fp32",
    "ort-int8-dynamic": "int8",
    "ort-int8-qdq": "int8",
    "openvino": "default",
    "openvino-f32": "fp32",
    "openvino-nncf-int8": "int8",
    "lamina-fp32": "fp32",
    "pytorch": "fp32",
}
PEERS = tuple(e for e in PRECISION if e not in ("onnxruntime", "pytorch"))


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"engine needs {module!r}: pip install 'lamina[{extra}]'") from e


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def prepare(engine: str, onnx_path: str, tmp: Path, calibration: list[dict[str, np.ndarray]]
            ) -> str:
    """The model file ``engine`` runs (quantized into ``tmp`` when the engine quantizes)."""
    if engine in ("openvino", "openvino-f32", "onnxruntime"):
        return onnx_path
    if engine == "ort-int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = tmp / "ort_int8_dynamic.onnx"
        with _quiet_root_logger():  # its advice to pre-process the model, on every call
            quantize_dynamic(onnx_path, str(out), weight_type=QuantType.QInt8)
        return str(out)
    if engine == "ort-int8-qdq":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.it, None)

        out = tmp / "ort_int8_qdq.onnx"
        quantize_static(onnx_path, str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        return str(out)
    if engine == "openvino-nncf-int8":
        ov = _need("openvino", "openvino")
        nncf = _need("nncf", "openvino")
        model = ov.Core().read_model(onnx_path)
        names = [p.get_any_name() for p in model.inputs]
        data = [{k: v for k, v in f.items() if k in names} for f in calibration]
        q = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(data))
        out = tmp / "openvino_nncf_int8.xml"
        ov.save_model(q, str(out))
        return str(out)
    raise UsageError(f"unknown engine {engine!r}")


def make_call(engine: str, path: str, feeds: dict[str, np.ndarray], threads: int
              ) -> Callable[[], Any]:
    """One inference call of ``engine`` on ``feeds`` (inside the engine's worker process)."""
    if engine.startswith("ort-"):
        from lamina.backends.reference import session

        sess = session(path, threads=threads, optimize=True)
        wanted = {i.name for i in sess.get_inputs()}
        ort_feeds = {k: v for k, v in feeds.items() if k in wanted}
        return lambda: sess.run(None, ort_feeds)
    if engine.startswith("openvino"):
        ov = _need("openvino", "openvino")
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads,
                                  "PERFORMANCE_HINT": "LATENCY"}
        if engine == "openvino-f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(path, "CPU", config)
        names = {p.get_any_name() for p in compiled.inputs}
        request = compiled.create_infer_request()
        ov_feeds = {k: v for k, v in feeds.items() if k in names}
        return lambda: request.infer(ov_feeds)
    if engine == "lamina-fp32":
        import lamina.backends.tvm as lamina_tvm

        model = lamina_tvm.load(path, threads=threads)
        return lambda: model.run(feeds)
    raise SystemExit(f"unknown engine {engine}")


def artifact_precision(manifest: dict[str, Any]) -> str:
    """``int8`` / ``bf16`` when the artifact has INT8 / BF16 kernels, else ``fp32``."""
    return str(manifest.get("precision") or "fp32")


def check_lamina(artifact: str, onnx_path: str, feeds: dict[str, np.ndarray], threads: int,
                 lossy: bool, cosine_floor: float) -> str:
    """Lamina's outputs against ONNX Runtime fp32 on the benchmark's feeds, before any timing:
    within 1e-4 (max abs) for fp32 artifacts, a mean row cosine (each token's vector against ORT's)
    of at least ``cosine_floor`` for lossy ones. Returns a one-line summary; raises UsageError when
    the check fails."""
    import lamina.backends.tvm as lamina_tvm
    from lamina.backends.reference import session

    sess = session(onnx_path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    want = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted}),
                    strict=True))
    got = lamina_tvm.load(artifact, threads=threads).run(feeds)
    worst_diff, worst_cos, mean_cos = 0.0, 1.0, 1.0
    for name, w in want.items():
        if name not in got:
            continue
        g = np.asarray(got[name], np.float64)
        w = np.asarray(w, np.float64)
        worst_diff = max(worst_diff, float(np.abs(g - w).max()))
        rows_g, rows_w = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
        num = (rows_g * rows_w).sum(1)
        den = np.linalg.norm(rows_g, axis=1) * np.linalg.norm(rows_w, axis=1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
        worst_cos = min(worst_cos, float(cos.min()))
        mean_cos = min(mean_cos, float(cos.mean()))
    line = (f"max abs diff {worst_diff:.2e}, row cosine mean {mean_cos:.5f} (min {worst_cos:.5f})"
            " vs ONNX Runtime fp32")
    if lossy and mean_cos < cosine_floor:
        raise UsageError(f"Lamina's lossy outputs fall below the cosine floor {cosine_floor}: "
                         f"{line}")
    if not lossy and worst_diff > 1e-4:
        raise UsageError(f"Lamina's fp32 outputs differ from ONNX Runtime fp32: {line}")
    return line
