"""What every taskctl command shares: the session (config, client), error handling, and how
states are printed and turned into exit statuses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from taskd import terminal
from taskd.backends.base import Progress
from taskd.cli.params import as_click_error, load
from taskd.client import Client
from taskd.config import Config
from taskd.errors import ResultTimeout, TaskdError
from taskd.exitcodes import (
    EXIT_DRIVER_ERROR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NO_SUCH_TASK,
    EXIT_NOT_FINISHED,
    EXIT_OK,
)
from taskd.results import GroupResult
from taskd.wire import State, TaskState


class Group(click.Group):
    """Turns taskd errors into messages and exit statuses (``exitcodes``); never a
    traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskdError as exc:
            raise as_click_error(exc, EXIT_DRIVER_ERROR) from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        terminal.shown_on_terminals()  # what producers and tasks wrote is shown, not obeyed
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:  # Ctrl-C, or end of input at a prompt
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


@dataclass
class Session:
    config_path: str | None
    _client: Client | None = None

    @property
    def config(self) -> Config:
        return (self._client or self.reader).config

    @property
    def client(self) -> Client:
        """The client of a command that writes (sends, purges, revokes...)."""
        return self._open(writes=True)

    @property
    def reader(self) -> Client:
        """The client of a command that only reads (a result not waited for, queue stats,
        peeks, dead letters listed, live workers): its checks do not ask the user's
        permission to write."""
        return self._open(writes=False)

    def _open(self, *, writes: bool) -> Client:
        if self._client is None:
            config = load(self.config_path, log_level="warning", writes=writes)
            # Each send confirmed before taskctl goes on: a failure is its exit status, and
            # an id it prints is of a task that is queued.
            self._client = Client(config, pipeline=0)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def pass_session(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the Session to a command, which also takes ``-c/--config`` after its name
    (``taskctl result ID -c FILE``, as ``taskd start -c FILE``)."""

    def use_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
        if path is not None:
            ctx.find_object(Session).config_path = path  # read when the client is first used

    passing = click.make_pass_decorator(Session)(fn)
    return click.option(
        "-c",
        "--config",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=use_config,
        help="YAML config file, as before the command.",
    )(passing)


def finish(state: TaskState | None, task_id: str, as_json: bool) -> NoReturn:
    """Print a state the way the exit status says, and exit with that status."""
    if state is None:
        click.echo(f"no state is stored for {task_id} (never sent, or expired)", err=True)
        sys.exit(EXIT_NO_SUCH_TASK)
    sys.exit(show(state, as_json, with_id=False))


def show(state: TaskState, as_json: bool, *, with_id: bool) -> int:
    """Print one state (results on stdout, an error on stderr); the exit status it means."""
    prefix = f"{state.task_uuid} {state.state.value} " if with_id else ""
    if as_json:
        click.echo(state.encode().decode())
    if state.state is State.SUCCESS:
        if not as_json:
            click.echo(prefix + state.human_readable())
        return EXIT_OK
    if state.state is State.FAILURE:
        if with_id and not as_json:
            click.echo(prefix.rstrip())
        click.echo(f"{state.task_uuid} failed: {state.error}", err=True)
        return EXIT_FAILURE
    if with_id and not as_json:
        click.echo(prefix.rstrip())
    else:
        click.echo(f"{state.task_uuid} has not finished: {state.state.value}", err=True)
    return EXIT_NOT_FINISHED


def worst(statuses: Sequence[int]) -> int:
    """A failure outranks a task with no state, which outranks an unfinished one, which
    outranks success."""
    for status in (EXIT_FAILURE, EXIT_NO_SUCH_TASK, EXIT_NOT_FINISHED):
        if status in statuses:
            return status
    return EXIT_OK


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A progress bar on stderr (members done / total) when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            # taskctl's own drawing (carriage returns, the cursor), not what others wrote
            stream = terminal.unshown(sys.stderr)
            bar = click.progressbar(length=total, label="finished", file=stream)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def waited(wait: Callable[[], Any]) -> Any:
    """What a wait returned; exit 3 naming the unfinished task when the time ran out."""
    try:
        return wait()
    except ResultTimeout as exc:
        click.echo(f"{exc.task_id} has not finished: {exc.state or 'no state yet'}", err=True)
        sys.exit(EXIT_NOT_FINISHED)


def member_states(group: GroupResult, wait_s: float | None) -> list[TaskState | None]:
    if wait_s is None:
        return group.states()
    with progress_bar(True) as progress:
        return waited(lambda: group.wait(wait_s, progress))


def finish_group(states: Sequence[TaskState | None], ids: Sequence[str], as_json: bool) -> NoReturn:
    statuses = []
    for task_id, state in zip(ids, states, strict=True):
        if state is None:
            click.echo(f"{task_id} UNKNOWN")
            statuses.append(EXIT_NO_SUCH_TASK)
        else:
            statuses.append(show(state, as_json, with_id=not as_json))
    sys.exit(worst(statuses))
