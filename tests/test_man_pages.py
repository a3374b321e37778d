"""The man pages against the code: every command and option of ``taskd`` and ``taskctl``, every
configuration key and its variable, every exit status, signal and notification must be in
them, they must pass ``mandoc -T lint``, and the package must install them."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from taskd import credentials, exitcodes
from taskd.cli.taskctl import main as taskctl_main
from taskd.cli.taskd import main as taskd_main
from taskd.config import CONFIG_ENV, STATE_DIR_ENV, env_names
from taskd.tls import TLS_OPTIONS
from taskd.worker import sdnotify
from taskd.worker.supervisor import HANDLED
from tests.support.harness import REPO

MAN = REPO / "man"
PAGES = {"taskd": MAN / "taskd.8", "taskctl": MAN / "taskctl.1", "taskd.yml": MAN / "taskd.yml.5"}
COMMANDS = {"taskd": taskd_main, "taskctl": taskctl_main}


def plain(roff: str) -> str:
    """Roff source as the words a reader sees: font changes dropped, escapes resolved."""
    text = re.sub(r"\\f(\[[A-Z]*\]|[BIRP])", "", roff)
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace("\\&", "").replace("\\e", "\\")
    return re.sub(r"^\.[A-Z]{1,2} ?", "", text, flags=re.MULTILINE).replace('"', "")


def sections(page: Path) -> dict[str, str]:
    """Each ``.SH``/``.SS`` heading (as plain text) and the plain text under it."""
    found: dict[str, str] = {}
    heading, lines = "", []
    for line in page.read_text().splitlines():
        if line.startswith((".SH ", ".SS ")):
            found[heading] = plain("\n".join(lines))
            heading, lines = plain(line[4:]).strip(), []
        else:
            lines.append(line)
    found[heading] = plain("\n".join(lines))
    return found


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def commands(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from commands(command, (*path, name))


def options(command: click.Command) -> list[str]:
    """Every spelling of every option, ``--help`` included."""
    params = command.get_params(click.Context(command))
    return [o for p in params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]


def command_at(group: click.Command, path: tuple[str, ...]) -> click.Command:
    for name in path:
        assert isinstance(group, click.Group)
        group = group.commands[name]
    return group


@pytest.mark.parametrize("program", sorted(COMMANDS))
def test_every_command_and_option_is_in_its_page(program: str) -> None:
    found = sections(PAGES[program])
    main = COMMANDS[program]
    for path in commands(main):
        command = command_at(main, path)
        if isinstance(command, click.Group) and path:
            continue  # a group of commands (taskctl queue): its commands have the sections
        where = " ".join(path) or "OPTIONS"
        assert where in found, f"{program}({PAGES[program].suffix[1:]}) has no section {where!r}"
        for option in options(command):
            text = found["OPTIONS"] if option in ("-h", "--help") else found[where]
            assert mentions(text, option), f"{program} {where}: {option} is not documented"


def config_keys() -> dict[str, str]:
    """Every key path of the configuration schema, with its variable."""
    return {".".join(path): name for name, path in env_names().items()}


def test_every_config_key_and_its_variable_is_in_taskd_yml_5() -> None:
    """Each in the subsection of its section (``worker``...), top-level ones in "Top level"."""
    found = sections(PAGES["taskd.yml"])
    for key, variable in config_keys().items():
        section = key.split(".")[0] if "." in key else "Top level"
        assert section in found, f"taskd.yml(5) has no subsection {section!r}"
        assert mentions(found[section], key), f"taskd.yml(5) does not describe {key}"
        assert mentions(found[section], variable), f"taskd.yml(5) lacks {variable} for {key}"


def test_every_tls_option_is_in_taskd_yml_5_and_the_readme() -> None:
    tls = sections(PAGES["taskd.yml"])["TLS"]
    readme = (REPO / "README.md").read_text()
    for option in TLS_OPTIONS:
        assert mentions(tls, option), f"taskd.yml(5) TLS does not describe {option}"
        assert f"{option}=" in readme, f"the README does not describe {option}"


def test_every_key_of_etc_taskd_yml_is_in_taskd_yml_5() -> None:
    text = plain(PAGES["taskd.yml"].read_text())
    data = yaml.safe_load((REPO / "etc" / "taskd.yml").read_text())
    sections_ = {key.split(".")[0] for key in config_keys() if "." in key}
    paths = [
        f"{name}.{key}" if name in sections_ else name
        for name, value in data.items()
        for key in (value if name in sections_ else [None])
    ]
    assert len(paths) > 30
    for path in paths:
        assert mentions(text, path), f"etc/taskd.yml's {path} is not in taskd.yml(5)"
        assert path in config_keys(), f"etc/taskd.yml's {path} is not a key"


def test_exit_statuses_signals_notifications_and_variables_are_documented() -> None:
    taskd, taskctl = sections(PAGES["taskd"]), sections(PAGES["taskctl"])
    for code, _meaning in exitcodes.TASKCTL_EXIT_STATUSES:
        assert mentions(taskctl["EXIT STATUS"], str(code)), f"taskctl exit status {code}"
    for code in (exitcodes.EXIT_OK, exitcodes.EXIT_FAILURE, exitcodes.EXIT_USAGE):
        assert mentions(taskd["EXIT STATUS"], str(code)), f"taskd exit status {code}"
    for signum in HANDLED:
        assert mentions(taskd["SIGNALS"], signal.Signals(signum).name)
    for message in ("READY=1", "STATUS=", "RELOADING=1", "MONOTONIC_USEC=", "STOPPING=1"):
        assert message in taskd["SYSTEMD"], message
    for message in ("EXTEND_TIMEOUT_USEC=", "WATCHDOG=1"):
        assert message in taskd["SYSTEMD"], message
    shared = [CONFIG_ENV, STATE_DIR_ENV, credentials.CREDENTIALS_DIRECTORY_ENV]
    daemon = [sdnotify.NOTIFY_SOCKET_ENV, sdnotify.WATCHDOG_USEC_ENV, sdnotify.WATCHDOG_PID_ENV]
    for variable in [*shared, *daemon, "JOURNAL_STREAM", "_TASKD_COMPLETE"]:
        assert mentions(taskd["ENVIRONMENT"], variable), f"taskd(8) lacks {variable}"
    for variable in [*shared, "_TASKCTL_COMPLETE"]:
        assert mentions(taskctl["ENVIRONMENT"], variable), f"taskctl(1) lacks {variable}"


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
@pytest.mark.parametrize("page", sorted(PAGES.values()), ids=lambda page: page.name)
def test_mandoc_lint_is_clean(page: Path) -> None:
    done = subprocess.run(
        ["mandoc", "-T", "lint", "-W", "warning", str(page)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_package_installs_every_page() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    installed = project["tool"]["setuptools"]["data-files"]
    for page in MAN.iterdir():
        assert f"man/{page.name}" in installed[f"share/man/man{page.suffix[1:]}"], page.name
