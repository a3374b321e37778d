"""Shell completion through click's own mechanism: ``_TASKCTL_COMPLETE=bash_source taskctl``
prints the script, and the script's requests complete commands and options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.harness import BIN, process_env


def complete(tmp_path: Path, program: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program)],
        capture_output=True,
        text=True,
        env=process_env(tmp_path, **variables),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("program", ["taskd", "taskctl"])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script(tmp_path: Path, program: str, shell: str) -> None:
    variable = f"_{program.upper()}_COMPLETE"
    done = complete(tmp_path, program, **{variable: f"{shell}_source"})
    assert done.returncode == 0, done.stderr
    assert variable in done.stdout  # the script calls the program back with it
    assert f"_{program}_completion" in done.stdout


@pytest.mark.parametrize(
    ("program", "words", "expected"),
    [
        ("taskd", "taskd st", {"start"}),
        ("taskd", "taskd start --l", {"--log-level"}),
        ("taskd", "taskd start --log-level ", {"debug", "info", "warning", "error", "critical"}),
        ("taskctl", "taskctl queue p", {"peek", "purge"}),
        ("taskctl", "taskctl send x --retry-c", {"--retry-count"}),
    ],
)
def test_bash_completes_commands_options_and_choices(
    tmp_path: Path, program: str, words: str, expected: set[str]
) -> None:
    done = complete(
        tmp_path,
        program,
        **{
            f"_{program.upper()}_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        },
    )
    assert done.returncode == 0, done.stderr
    offered = {line.split(",", 1)[1] for line in done.stdout.splitlines()}
    assert offered == expected
