"""A failing out-of-tree pass writes a reproducer that runs: for a pass loaded from a ``.py`` file
and for one defined in a script run directly (``__main__``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from lamina.compiler.driver import api
from tests.compiler._graphs import reshape_graph

BOOM = '''
from lamina.compiler.pipeline import Pass, register


@register("test-file-boom")
class FileBoomPass(Pass):
    """Always fails."""

    def run(self, model, ctx):
        raise RuntimeError("kaboom from a user pass")
'''

SCRIPT = BOOM + '''

if __name__ == "__main__":
    import sys

    import lamina

    model = lamina.load_model(sys.argv[1])
    lamina.optimize(model, "test-file-boom")
'''


def _model(tmp_path: Path) -> Path:
    model, _ = api.optimize(reshape_graph(), "infer-shapes")
    return api.save(model, tmp_path / "m.onnx")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}
    )


def _reproduce(message: str) -> subprocess.CompletedProcess:
    """Run the reproducer line a failure printed (``lamina ...`` through this interpreter)."""
    line = message.split("reproduce with: ", 1)[1].strip().splitlines()[0]
    cmd = shlex.split(line)
    assert cmd[0] == "lamina"
    return _run([sys.executable, "-m", "lamina.compiler.driver.cli", *cmd[1:]])


def _assert_reproduces(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode != 0
    assert "kaboom from a user pass" in proc.stderr, proc.stderr
    assert "cannot import" not in proc.stderr and "unknown pass" not in proc.stderr


def test_reproducer_of_a_pass_loaded_from_a_file(tmp_path: Path):
    plugin = tmp_path / "boom_passes.py"
    plugin.write_text(BOOM)
    onnx_path = _model(tmp_path)
    proc = _run(
        [
            sys.executable,
            "-m",
            "lamina.compiler.driver.cli",
            "opt",
            str(onnx_path),
            "-o",
            str(tmp_path / "o.onnx"),
            "--load-passes",
            str(plugin),
            "--pipeline",
            "test-file-boom",
            "--dump-ir",
            str(tmp_path / "dump"),
        ]
    )
    _assert_reproduces(proc)
    assert f"--load-passes {plugin.resolve()}" in proc.stderr
    _assert_reproduces(_reproduce(proc.stderr))


def test_reproducer_of_a_pass_defined_in_a_script(tmp_path: Path):
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    onnx_path = _model(tmp_path)
    proc = _run([sys.executable, str(script), str(onnx_path)])
    assert proc.returncode != 0 and "reproduce with: " in proc.stderr, proc.stderr
    assert f"--load-passes {script.resolve()}" in proc.stderr
    _assert_reproduces(_reproduce(proc.stderr))
