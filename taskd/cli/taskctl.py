"""``taskctl``: send tasks, read results, look into queues.

Exit status: 0 the task succeeded (or the command worked), 1 the task failed (its error on
stderr) or taskctl could not do its job, 2 usage or configuration error, 3 the task had not
finished when the wait ended.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from taskd import __version__
from taskd.cli.params import TYPED_ARG, as_click_error, config_option, load
from taskd.client import Client, signature
from taskd.config import Config
from taskd.errors import ResultTimeout, TaskdError
from taskd.exitcodes import EXIT_FAILURE, EXIT_NOT_FINISHED, EXIT_OK
from taskd.wire import Arg, State, TaskState, gojson
from taskd.wire.args import human_readable


class Group(click.Group):
    """Turns taskd errors into messages and exit statuses; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskdError as exc:
            raise as_click_error(exc) from None


@dataclass
class Session:
    config_path: str | None
    _client: Client | None = None

    @property
    def config(self) -> Config:
        return self.client.config

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(load(self.config_path))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(__version__, prog_name="taskctl")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """taskctl: talk to a taskd queue."""
    session = Session(config_path)
    ctx.obj = session
    ctx.call_on_close(session.close)


pass_session = click.make_pass_decorator(Session)


def _finish(state: TaskState | None, task_id: str, as_json: bool) -> NoReturn:
    """Print a state the way the exit status says, and exit with that status."""
    if state is None:
        click.echo(f"no state is stored for {task_id} (never sent, or expired)", err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        click.echo(state.encode().decode())
    if state.state is State.SUCCESS:
        if not as_json:
            click.echo(human_readable(state.python_results()))
        sys.exit(EXIT_OK)
    if state.state is State.FAILURE:
        click.echo(f"{task_id} failed: {state.error}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"{task_id} has not finished: {state.state.value}", err=True)
    sys.exit(EXIT_NOT_FINISHED)


def _wait_and_finish(
    session: Session, task_id: str, wait_s: float | None, as_json: bool
) -> NoReturn:
    result = session.client.result(task_id)
    if wait_s is None:
        _finish(result.state(), task_id, as_json)
    try:
        state: TaskState | None = result.wait(wait_s)
    except ResultTimeout:
        state = result.state()
        if state is None:
            click.echo(f"{task_id} has not finished: no state yet", err=True)
            sys.exit(EXIT_NOT_FINISHED)
    _finish(state, task_id, as_json)


@main.command()
@click.argument("name")
@click.option(
    "--arg", "args", multiple=True, type=TYPED_ARG, help="TYPE:VALUE, e.g. '[]int64:[1,2,3]'."
)
@click.option("--queue", help="Queue to send to (default: default_queue).")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    help="Wait this many seconds and print the results.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print machinery JSON (the message, or the TaskState with --wait).",
)
@pass_session
def send(
    session: Session,
    name: str,
    args: Sequence[Arg],
    queue: str | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Send task NAME; print its id (or, with --wait, its results)."""
    sig = signature(name, *args, queue=queue or "")
    (sent,) = session.client.publish([sig])
    if wait_s is None:
        click.echo(sent.encode().decode() if as_json else sent.uuid)
        return
    _wait_and_finish(session, sent.uuid, wait_s, as_json)


@main.command()
@click.argument("task_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    help="Wait up to this many seconds for it to finish.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored TaskState.")
@pass_session
def result(session: Session, task_id: str, wait_s: float | None, as_json: bool) -> None:
    """Print a task's results; exit 0 SUCCESS, 1 FAILURE, 3 not finished."""
    _wait_and_finish(session, task_id, wait_s, as_json)


# -- queues -----------------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Look into and manage queues."""


@queue.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_session
def stats(session: Session, name: str | None, as_json: bool) -> None:
    """Messages ready and waiting for their ETA in a queue."""
    name = name or session.config.default_queue
    broker = session.client.broker
    figures = {"queue": name, "ready": broker.size(name), "delayed": broker.delayed(name)}
    if as_json:
        click.echo(gojson.encode_value(figures))
    else:
        click.echo(f"{name}: {figures['ready']} ready, {figures['delayed']} delayed")


@queue.command()
@click.argument("name", required=False)
@click.option("-n", "--limit", default=10, show_default=True, type=click.IntRange(min=1))
@pass_session
def peek(session: Session, name: str | None, limit: int) -> None:
    """Print the next messages of a queue (one JSON body per line) without taking them."""
    for body in session.client.broker.peek(name or session.config.default_queue, limit):
        click.echo(body.decode("utf-8", "replace"))


@queue.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_session
def purge(session: Session, name: str, yes: bool) -> None:
    """Delete every waiting message (ready and delayed) of queue NAME."""
    if not yes:
        click.confirm(f"Delete every waiting message of {name!r}?", abort=True, err=True)
    count = session.client.broker.purge(name)
    click.echo(f"purged {count} message(s) from {name}")


@queue.command()
@click.argument("name", required=False)
@click.option("-n", "--limit", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@pass_session
def dead(session: Session, name: str | None, limit: int, as_json: bool) -> None:
    """Messages set aside as undeliverable, newest first, with the reason."""
    for letter in session.client.broker.dead_letters(name or session.config.default_queue, limit):
        body = letter.body.decode("utf-8", "replace")
        if as_json:
            click.echo(
                gojson.encode_value(
                    {
                        "queue": letter.queue,
                        "reason": letter.reason,
                        "rejected_at": str(letter.rejected_at),
                        "body": body,
                    }
                )
            )
        else:
            click.echo(f"{letter.rejected_at}  {letter.reason}\n    {body}")


if __name__ == "__main__":
    main()
