"""The MongoDB result backend's settings: its URL and the ``mongodb:`` section, checked by
``taskd check-config`` (exit 2, naming the key, never showing the password)."""

from __future__ import annotations

from pathlib import Path

from taskd.config import env_names, load_config
from tests.support.harness import run_cli, write_config


def test_the_database_key_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert env_names()["TASKD_MONGODB_DATABASE"] == ("mongodb", "database")
    path = write_config(tmp_path, {"mongodb": {"database": "results"}})
    assert load_config(path, env={}).mongodb.database == "results"
    overridden = load_config(path, env={"TASKD_MONGODB_DATABASE": "other"})
    assert overridden.mongodb.database == "other"
    assert load_config(env={"TASKD_STATE_DIR": str(tmp_path)}).mongodb.database == ""


def test_check_config_names_a_bad_database(tmp_path: Path) -> None:
    data = {"result_backend": "mongodb://127.0.0.1:27017", "mongodb": {"database": "a/b"}}
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(write_config(tmp_path, data)))
    assert done.returncode == 2, done.stderr
    assert "mongodb.database: 'a/b' is not a MongoDB database name" in done.stderr


def test_check_config_accepts_a_good_url_without_connecting(tmp_path: Path) -> None:
    url = "mongodb://taskd:hunter2@127.0.0.1:9/results?authSource=admin"
    done = run_cli(
        tmp_path,
        "taskd",
        "check-config",
        "-c",
        str(write_config(tmp_path, {"result_backend": url})),
    )
    assert done.returncode == 0, done.stderr
    assert "result_backend: mongodb://taskd:***@127.0.0.1:9/results?authSource=admin" in done.stdout
    assert "hunter2" not in done.stdout
