"""The CLI's logging: Lamina's records and those of the libraries it drives, through one handler.

onnx-ir, onnxscript, ONNX, TVM, ONNX Runtime's Python side and Python ``warnings`` all log through
``logging``; the CLI installs one handler on the root logger that prints ``lamina: LEVEL: message``.
Without ``--debug``, a record is one line: a third-party record gets its library's name as a prefix,
its message cut to the first line, and its traceback replaced by the exception's first line. With
``--debug`` everything passes unchanged (tracebacks included) at DEBUG level.

Native code writes to the process's stderr directly (TVM's C++ ``LOG(WARNING)``, e.g. from
destructors run while the interpreter exits). :func:`silence_native_stderr` closes that channel
after the CLI has printed its one-line error, so nothing follows the error line.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "lamina: %(levelname)s: %(message)s"


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


class OneLineFilter(logging.Filter):
    """Make every record one line, with no traceback (installed only without ``--debug``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's malformed format string
            message = str(record.msg)
        line = _first_line(message)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            detail = _first_line(str(exc))
            line = f"{line} ({type(exc).__name__}{': ' + detail[:200] if detail else ''})"
        if not record.name.startswith("lamina"):
            library = "warnings" if record.name == "py.warnings" else record.name.split(".")[0]
            line = f"[{library}] {line}"
        record.msg, record.args = line, ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (the CLI may run in-process
    under a test runner that swaps it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def setup_logging(debug: bool) -> None:
    """Route all logging (Lamina's and third-party) through one stderr handler (see the module
    doc)."""
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    if not debug:
        handler.addFilter(OneLineFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)  # an earlier in-process run's
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.captureWarnings(True)


def silence_native_stderr() -> None:
    """Send whatever native code writes to stderr from now on to /dev/null (after the error
    line)."""
    try:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters, captured streams)
        pass
