"""URL passwords from files and systemd credentials: ``{file:PATH}``, ``{credential:NAME}``."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskd.config import dump, load_config
from taskd.credentials import redact_url, resolve_url
from taskd.errors import ConfigError

SECRET = "s3cr:t/p@ss word"  # every character a URL would misread
QUOTED = "s3cr%3At%2Fp%40ss%20word"


def _config(tmp_path: Path, **keys: str) -> Path:
    path = tmp_path / "taskd.yml"
    path.write_text("".join(f"{key}: '{value}'\n" for key, value in keys.items()))
    return path


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """A directory as systemd lays out $CREDENTIALS_DIRECTORY."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "broker-password").write_text(SECRET + "\n")
    return directory


def test_a_credential_becomes_the_url_password(tmp_path: Path, credentials: Path) -> None:
    path = _config(
        tmp_path,
        broker="amqp://taskd:{credential:broker-password}@rabbit:5672/",
        result_backend="redis://:{credential:broker-password}@cache:6379/1",
    )
    config = load_config(path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.broker == f"amqp://taskd:{QUOTED}@rabbit:5672/"
    assert config.result_backend == f"redis://:{QUOTED}@cache:6379/1"


def test_the_password_round_trips_through_the_drivers_url_parsing(credentials: Path) -> None:
    from taskd.amqplink import connection_parameters
    from taskd.config import Config
    from taskd.redis_url import connection_kwargs

    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    amqp = resolve_url("amqp://taskd:{credential:broker-password}@rabbit/", "broker", None, env)
    assert connection_parameters(amqp, Config(), "broker").credentials.password == SECRET
    file = credentials / "broker-password"
    for form in ("redis://:{credential:broker-password}@cache", f"redis://{{file:{file}}}@cache"):
        redis = resolve_url(form, "broker", None, env)
        assert connection_kwargs(redis, "broker")["password"] == SECRET


def test_a_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "redis.pass").write_text("hunter2\r\n")
    path = _config(tmp_path, broker="redis://{file:redis.pass}@cache:6379/0")  # machinery's form
    assert load_config(path, env={}).broker == "redis://hunter2@cache:6379/0"


def test_a_secret_is_never_shown(tmp_path: Path, credentials: Path) -> None:
    path = _config(tmp_path, broker="amqp://taskd:{credential:broker-password}@rabbit/")
    config = load_config(path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert SECRET not in dump(config) and QUOTED not in dump(config)
    assert "amqp://taskd:***@rabbit/" in dump(config)
    assert redact_url(config.broker) == "amqp://taskd:***@rabbit/"


def test_the_environment_can_name_a_credential_too(tmp_path: Path, credentials: Path) -> None:
    env = {
        "TASKD_BROKER": "redis://:{credential:broker-password}@cache:6379/0",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    assert load_config(env=env).broker == f"redis://:{QUOTED}@cache:6379/0"
    with pytest.raises(ConfigError) as caught:
        load_config(env={**env, "CREDENTIALS_DIRECTORY": str(credentials / "none")})
    assert caught.value.key == "TASKD_BROKER" and caught.value.file == "environment"


@pytest.mark.parametrize(
    ("broker", "env", "reason"),
    [
        (
            "amqp://taskd:{credential:broker-password}@rabbit/",
            {},
            "credential 'broker-password' needs $CREDENTIALS_DIRECTORY",
        ),
        ("amqp://taskd:{credential:nope}@rabbit/", None, "cannot read password file"),
        ("amqp://taskd:{credential:../x}@rabbit/", None, "'../x' is not a credential name"),
        ("amqp://taskd:{file:}@rabbit/", None, "{file:} names no file"),
        ("amqp://taskd:{file:empty}@rabbit/", None, "is empty"),
        ("amqp://{credential:broker-password}@rabbit/", None, "may only stand for the URL's"),
        ("redis://cache/{credential:broker-password}", None, "may only stand for the URL's"),
        (
            "amqp://{file:empty}:{file:empty}@rabbit/",
            None,
            "only one password placeholder is allowed",
        ),
    ],
)
def test_errors_name_the_key_and_the_file_never_the_secret(
    tmp_path: Path, credentials: Path, broker: str, env: dict[str, str] | None, reason: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    path = _config(tmp_path, broker=broker)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"CREDENTIALS_DIRECTORY": str(credentials)} if env is None else env)
    assert caught.value.key == "broker"
    assert caught.value.file == str(path)
    assert reason in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_url_without_a_placeholder_is_left_alone() -> None:
    url = "redis://:{not-a-placeholder}@cache:6379/0"
    assert resolve_url(url, "broker", None, {}) == url
