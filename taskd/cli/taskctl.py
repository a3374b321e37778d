"""``taskctl``: send tasks, read results, look into queues.

Exit status: 0 the task succeeded (or the command worked), 1 the task failed (its error on
stderr) or taskctl could not do its job, 2 usage or configuration error, 3 the task had not
finished when the wait ended.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from taskd import __version__, workflows
from taskd.cli import documents
from taskd.cli.params import ISO_TIME, TYPED_ARG, as_click_error, config_option, load
from taskd.client import Client, GroupResult, Progress, signature
from taskd.config import Config
from taskd.errors import ArgumentError, ResultTimeout, TaskdError
from taskd.exitcodes import EXIT_FAILURE, EXIT_NOT_FINISHED, EXIT_OK
from taskd.wire import Arg, Signature, State, TaskState, gojson


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
    sys.exit(_show(state, as_json, with_id=False))


def _show(state: TaskState, as_json: bool, *, with_id: bool) -> int:
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


def _worst(statuses: Sequence[int]) -> int:
    """A failure outranks an unfinished task, which outranks success."""
    for status in (EXIT_FAILURE, EXIT_NOT_FINISHED):
        if status in statuses:
            return status
    return EXIT_OK


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A progress bar on stderr (members done / total) when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="finished", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _waited(wait: Callable[[], Any]) -> Any:
    """What a wait returned; exit 3 naming the unfinished task when the time ran out."""
    try:
        return wait()
    except ResultTimeout as exc:
        click.echo(f"{exc.task_id} has not finished: {exc.state or 'no state yet'}", err=True)
        sys.exit(EXIT_NOT_FINISHED)


def _member_states(group: GroupResult, wait_s: float | None) -> list[TaskState | None]:
    if wait_s is None:
        return group.states()
    with _progress(True) as progress:
        return _waited(lambda: group.wait(wait_s, progress))


def _finish_group(
    states: Sequence[TaskState | None], ids: Sequence[str], as_json: bool
) -> NoReturn:
    statuses = []
    for task_id, state in zip(ids, states, strict=True):
        if state is None:
            click.echo(f"{task_id} UNKNOWN")
            statuses.append(EXIT_NOT_FINISHED)
        else:
            statuses.append(_show(state, as_json, with_id=not as_json))
    sys.exit(_worst(statuses))


def _sent_signature(
    name: str,
    args: Sequence[Arg],
    *,
    queue: str | None,
    eta: datetime | None,
    countdown: float | None,
    retry_count: int,
    retry_timeout: int,
    immutable: bool,
    priority: int,
    on_success: Sequence[str],
    on_error: Sequence[str],
) -> Signature:
    if eta is not None and countdown is not None:
        raise click.UsageError("give --eta or --countdown, not both")
    try:
        callbacks = {
            option: [documents.from_text(text) for text in texts]
            for option, texts in (("on_success", on_success), ("on_error", on_error))
        }
    except (ArgumentError, documents.DocumentError, ValueError) as exc:
        raise click.UsageError(f"a callback: {exc}") from None
    return signature(
        name,
        *args,
        queue=queue or "",
        eta=eta,
        countdown=countdown,
        retry_count=retry_count,
        retry_timeout=retry_timeout,
        immutable=immutable,
        priority=priority,
        **callbacks,
    )


@main.command()
@click.argument("name")
@click.option(
    "--arg", "args", multiple=True, type=TYPED_ARG, help="TYPE:VALUE, e.g. '[]int64:[1,2,3]'."
)
@click.option("--queue", help="Queue to send to (default: default_queue).")
@click.option("--eta", type=ISO_TIME, help="Not before this ISO 8601 time (with its zone).")
@click.option("--countdown", type=click.FloatRange(min=0), help="Not before this many seconds.")
@click.option("--retry-count", default=0, type=click.IntRange(min=0), help="Retries on failure.")
@click.option(
    "--retry-timeout",
    default=0,
    type=click.IntRange(min=0),
    help="Retry delays are the Fibonacci numbers after this (0: 1, 2, 3, 5... s).",
)
@click.option("--immutable", is_flag=True, help="Do not append the results to --on-success tasks.")
@click.option("--priority", default=0, type=click.IntRange(0, 255))
@click.option(
    "--on-success",
    multiple=True,
    metavar="'NAME [TYPE:VALUE]...'",
    help="Send this task with the results appended when this one succeeds.",
)
@click.option(
    "--on-error",
    multiple=True,
    metavar="'NAME [TYPE:VALUE]...'",
    help="Send this task with the error prepended when this one finally fails.",
)
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
    wait_s: float | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Send task NAME; print its id (or, with --wait, its results)."""
    (sent,) = session.client.publish([_sent_signature(name, args, **options)])
    if wait_s is None:
        click.echo(sent.encode().decode() if as_json else sent.uuid)
        return
    result = session.client.result(sent.uuid)
    _finish(_waited(lambda: result.wait(wait_s)), sent.uuid, as_json)


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
    """Print a task's results (or each member's, for a group id).

    Exit 0 SUCCESS, 1 FAILURE, 3 not finished.
    """
    group = session.client.group_result(task_id) if task_id.startswith("group_") else None
    if group is not None:
        _finish_group(_member_states(group, wait_s), group.member_ids, as_json)
    single = session.client.result(task_id)
    if wait_s is None:
        _finish(single.state(), task_id, as_json)
    _finish(_waited(lambda: single.wait(wait_s)), task_id, as_json)


# -- workflows --------------------------------------------------------------------------------


def _read_document(file: str) -> Any:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read {file}: {exc.strerror}") from None
    try:
        return documents.load(text, "stdin" if file == "-" else file)
    except documents.DocumentError as exc:
        raise click.UsageError(str(exc)) from None


def _in_queue(sigs: Sequence[Signature], queue: str | None) -> list[Signature]:
    return [sig.with_changes(routing_key=sig.routing_key or queue or "") for sig in sigs]


def _parsed(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except documents.DocumentError as exc:
        raise click.UsageError(str(exc)) from None


WORKFLOW_OPTIONS = [
    click.argument("file", type=click.Path(dir_okay=False, allow_dash=True)),
    click.option("--queue", help="Queue for signatures that name none (default: default_queue)."),
    click.option(
        "--wait", "wait_s", type=click.FloatRange(min=0), help="Wait this long; print the results."
    ),
    click.option("--json", "as_json", is_flag=True, help="Print final TaskStates as JSON."),
]


SEND_CONCURRENCY = click.option(
    "--send-concurrency",
    default=0,
    type=click.IntRange(min=0),
    help="Members per send batch (0: all).",
)


def workflow_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(WORKFLOW_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@workflow_options
@pass_session
def chain(
    session: Session, file: str, queue: str | None, wait_s: float | None, as_json: bool
) -> None:
    """Send the signatures in FILE (YAML or JSON list, - for stdin) as a chain.

    Prints each link's id, the last one being the chain's; with --wait, then its result.
    """
    links = _in_queue(_parsed(lambda: documents.parse_list(_read_document(file), file)), queue)
    sent = session.client.send_chain(workflows.chain(*links))
    for link_id in sent.link_ids:
        click.echo(link_id)
    if wait_s is not None:
        sys.exit(_show(_waited(lambda: sent.wait(wait_s)), as_json, with_id=False))


@main.command()
@workflow_options
@SEND_CONCURRENCY
@pass_session
def group(
    session: Session,
    file: str,
    queue: str | None,
    wait_s: float | None,
    as_json: bool,
    send_concurrency: int,
) -> None:
    """Send the signatures in FILE as a group.

    Prints the group id and each member's id; with --wait, then each member's results.
    """
    members = _in_queue(_parsed(lambda: documents.parse_list(_read_document(file), file)), queue)
    sent = session.client.send_group(workflows.group(*members), send_concurrency)
    for line in (sent.group_id, *sent.member_ids):
        click.echo(line)
    if wait_s is not None:
        _finish_group(_member_states(sent, wait_s), sent.member_ids, as_json)


@main.command()
@workflow_options
@SEND_CONCURRENCY
@pass_session
def chord(
    session: Session,
    file: str,
    queue: str | None,
    wait_s: float | None,
    as_json: bool,
    send_concurrency: int,
) -> None:
    """Send FILE's group, then its callback with every member's results.

    FILE is {group: [...], callback: ..., error_callback: ...}. Prints the group id, the member
    ids and the callback's id; with --wait, then the callback's result (exit 1, with the
    member's error, if a member failed).
    """
    members, callback, error_callback = _parsed(
        lambda: documents.parse_chord(_read_document(file), file)
    )
    (callback,) = _in_queue([callback], queue)
    workflow = workflows.chord(_in_queue(members, queue), callback, error_callback)
    sent = session.client.send_chord(workflow, send_concurrency)
    for line in (sent.group.group_id, *sent.group.member_ids, sent.task_id):
        click.echo(line)
    if wait_s is not None:
        with _progress(True) as progress:
            state = _waited(lambda: sent.wait(wait_s, progress))
        sys.exit(_show(state, as_json, with_id=False))


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
