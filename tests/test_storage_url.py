"""Database URLs: masked wherever they are shown, read from a file or the environment."""
from __future__ import annotations

import pytest

from cnnbench.space import SpaceError
from cnnbench.engines.storage_url import masked, resolve, scrub


def test_passwords_are_masked():
    assert masked("postgresql+psycopg://me:s3cr%40t@db:5432/x") == "postgresql+psycopg://me:***@db:5432/x"
    assert masked("sqlite:///tmp/study.db") == "sqlite:///tmp/study.db"
    assert masked("mysql://me@db/x") == "mysql://me@db/x"  # no password, nothing to hide
    url = "postgresql://me:hunter2@db/x"
    assert scrub("cnnbench sweep --storage postgresql://me:hunter2@db/x", url) == \
        "cnnbench sweep --storage postgresql://me:***@db/x"
    assert scrub('password authentication failed: "hunter2"', url) == 'password authentication failed: "***"'


def test_the_url_comes_from_the_flag_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNBENCH_STORAGE", raising=False)
    assert resolve(None) is None
    assert resolve("postgresql://u:p@h/d") == "postgresql+psycopg://u:p@h/d"  # psycopg 3, the shipped driver
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://u:p@h/d\n")
    assert resolve(f"@{secret}") == "postgresql+psycopg://u:p@h/d"
    monkeypatch.setenv("CNNBENCH_STORAGE", "sqlite:///x.db")
    assert resolve(None) == "sqlite:///x.db"
    with pytest.raises(SpaceError, match="cannot read a database URL from"):
        resolve(f"@{tmp_path / 'missing'}")
