import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "x7Qm2vLp9RtZc4Wn8YbKd6Hs3Fj1Gu5Ae0Xo2Pi7Vl9Mq4Nr8Ts6Uw3Yz1Bc5De7Fg"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "DJANGO_ENV"}
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120
    )


def test_development_defaults(settings):
    assert settings.PRODUCTION is False
    assert settings.SECRET_KEY and "django-insecure" in settings.SECRET_KEY
    assert settings.REDIS_URL.startswith("redis://127.0.0.1:6379/")
    assert settings.DATA_DIR.name == "var" or "DATA_DIR" in os.environ
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CELERY_TASK_SERIALIZER == "json"
    assert settings.CELERY_TASK_ROUTES["chat.tasks.*"] == {"queue": "llm"}


def test_tests_use_their_own_redis_database(settings):
    assert not settings.REDIS_URL.endswith("/0")
    assert settings.DATABASES["default"]["TEST"]["NAME"].startswith("test_docent_r")


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": GOOD_KEY}, "ALLOWED_HOSTS"),
        ({"SECRET_KEY": "django-insecure-" + "a" * 60, "ALLOWED_HOSTS": "docent.example.com"}, "SECRET_KEY"),
        ({"SECRET_KEY": GOOD_KEY, "ALLOWED_HOSTS": "docent.example.com", "DEBUG": "1"}, "DEBUG"),
    ],
)
def test_production_refuses_to_start_without_real_secrets(env, complaint):
    result = _run(["manage.py", "check"], DJANGO_ENV="production", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert complaint in result.stderr


def test_production_mode_passes_check_deploy_without_warnings():
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        DJANGO_ENV="production",
        SECRET_KEY=GOOD_KEY,
        ALLOWED_HOSTS="docent.example.com",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout
