"""Settings from the environment: loud failures in production, a clean deploy check."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "MEDEASE_REQUIRE_SERVICES"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env(**overrides: str) -> dict[str, str]:
    env = {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "clinic.example.org",
    }
    env.update(overrides)
    return env


def test_check_deploy_is_clean_in_a_production_like_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_missing_secret_key_stops_start_up_with_debug_off():
    env = production_env()
    env["SECRET_KEY"] = ""
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


def test_missing_allowed_hosts_stops_start_up_with_debug_off():
    env = production_env()
    env["ALLOWED_HOSTS"] = ""
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS is required" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TOKEN_IDLE_TIMEOUT_SECONDS", "-5", "must be a positive integer"),
        ("PORT", "eighty", "invalid literal"),
        ("TIME_ZONE", "Mars/Base", "not a known IANA time zone"),
        ("DATABASE_URL", "mysql://u@h/db", "only PostgreSQL URLs"),
    ],
)
def test_bad_values_fail_loudly(name, value, message):
    result = manage("check", env={name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_required_services_refuse_the_sqlite_fallback():
    env = {"MEDEASE_REQUIRE_SERVICES": "1", "DATABASE_URL": "", "REDIS_URL": ""}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "refusing to fall back to SQLite" in result.stderr
