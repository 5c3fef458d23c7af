"""``import lamina``: the public API, resolved lazily, and one unambiguous installed name."""

from __future__ import annotations

import subprocess
import sys


def test_public_api_names():
    import lamina

    for name in ("compile", "load", "optimize", "Pass", "register", "PassResult", "load_model"):
        assert callable(getattr(lamina, name)), name


def test_import_lamina_is_light():
    # import lamina must not pull in TVM or ONNX Runtime (an artifact user pays for them only on
    # load).
    code = ("import sys, lamina; "
            "print(sorted(m for m in ('tvm', 'onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
