"""Test sessions are hermetic: their own tuning database, nothing under ``$HOME``."""

from __future__ import annotations

import os
from pathlib import Path

from lamina.backends.tvm.build import default_tuning_db


def test_session_has_its_own_tuning_database():
    db = Path(os.environ["LAMINA_TUNING_DB"])
    assert default_tuning_db() == db
    assert not db.resolve().is_relative_to(Path.home().resolve() / ".cache")


def test_default_tuning_database_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LAMINA_TUNING_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_tuning_db() == tmp_path / "lamina" / "tuning"
    monkeypatch.setenv("LAMINA_TUNING_DB", str(tmp_path / "db"))
    assert default_tuning_db() == tmp_path / "db"
