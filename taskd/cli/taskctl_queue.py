"""taskctl queue stats|peek|purge|dead: looking into queues."""

from __future__ import annotations

import sys

import click

from taskd.cli.params import Failure
from taskd.cli.session import Session, pass_session
from taskd.errors import UnknownDeadLetters
from taskd.exitcodes import EXIT_CANCELLED, EXIT_USAGE
from taskd.wire import GoTime, State, TaskState, gojson
from taskd.wire.signature import identity_of

REQUEUE_READ_MAX = 100_000  # dead letters read to find the tasks a requeue sends again


@click.group()
def queue() -> None:
    """Look into and manage queues."""


@queue.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_session
def stats(session: Session, name: str | None, as_json: bool) -> None:
    """Messages ready, waiting for their ETA, and taken but not settled: in flight (held by
    live consumers) and orphaned (held by consumers that died, until they are given back);
    "unknown" where the broker cannot tell."""
    name = name or session.config.default_queue
    broker = session.reader.broker
    held = broker.holding(name)
    figures = {
        "queue": name,
        "ready": broker.size(name),
        "delayed": broker.delayed(name),
        "in_flight": held.in_flight,
        "orphaned": held.orphaned,
    }
    if as_json:
        click.echo(gojson.encode_value(figures))
        return
    shown_figures = {key: "unknown" if value is None else value for key, value in figures.items()}
    click.echo(
        "{queue}: {ready} ready, {delayed} delayed, {in_flight} in flight,"
        " {orphaned} orphaned".format(**shown_figures)
    )


@queue.command()
@click.argument("name", required=False)
@click.option("-n", "--limit", default=10, show_default=True, type=click.IntRange(min=1))
@pass_session
def peek(session: Session, name: str | None, limit: int) -> None:
    """Print the next messages of a queue (one JSON body per line) without taking them."""
    for body in session.reader.broker.peek(name or session.config.default_queue, limit):
        click.echo(shown(body))


@queue.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_session
def purge(session: Session, name: str, yes: bool) -> None:
    """Delete every waiting message (ready and delayed) of queue NAME."""
    if not yes and not click.confirm(f"Delete every waiting message of {name!r}?", err=True):
        click.echo("cancelled: nothing was purged", err=True)
        sys.exit(EXIT_CANCELLED)
    count = session.client.broker.purge(name)
    click.echo(f"purged {count} message(s) from {name}")


EVERY = "\0every"  # what --requeue and --drop stand for when given no ID (with --all)


@queue.command()
@click.argument("name", required=False)
@click.option("-n", "--limit", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--requeue",
    multiple=True,
    is_flag=False,
    flag_value=EVERY,
    metavar="[ID]",
    help="Put dead letter ID back at the tail of its queue as a new message (repeatable);"
    " with --all, every one.",
)
@click.option(
    "--drop",
    multiple=True,
    is_flag=False,
    flag_value=EVERY,
    metavar="[ID]",
    help="Delete dead letter ID (repeatable); with --all, every one.",
)
@click.option("--all", "every", is_flag=True, help="With --requeue or --drop: every dead letter.")
@pass_session
def dead(
    session: Session,
    name: str | None,
    limit: int,
    as_json: bool,
    requeue: tuple[str, ...],
    drop: tuple[str, ...],
    every: bool,
) -> None:
    """Messages set aside as undeliverable, newest first, with their id and the reason; with
    --requeue or --drop, put them back on their queue or delete them."""
    verb, ids = _dead_action(requeue, drop, every)
    client = session.client if verb else session.reader  # opened before the config is read
    name = name or client.config.default_queue
    if verb:
        _act_on_dead(session, name, verb, ids, as_json)
        return
    letters = client.broker.dead_letters(name, limit)
    if not letters:
        click.echo(f"no dead letters in {name}", err=True)
    for letter in letters:
        body = shown(letter.body)
        if as_json:
            click.echo(
                gojson.encode_value(
                    {
                        "id": letter.id,
                        "queue": letter.queue,
                        "reason": letter.reason,
                        "rejected_at": str(letter.rejected_at),
                        "body": body,
                    }
                )
            )
        else:
            click.echo(f"{letter.id}  {letter.rejected_at}  {letter.reason}\n    {body}")


def _dead_action(
    requeue: tuple[str, ...], drop: tuple[str, ...], every: bool
) -> tuple[str, list[str] | None]:
    """("requeue" or "drop", the ids or None for --all), or ("", None) to list; a usage
    error for a mix that says nothing clear."""
    if requeue and drop:
        raise click.UsageError("give --requeue or --drop, not both")
    verb, given = ("requeue", requeue) if requeue else ("drop", drop) if drop else ("", ())
    ids = [value for value in given if value != EVERY]
    if not verb:
        if every:
            raise click.UsageError("--all goes with --requeue or --drop")
        return "", None
    if every and ids:
        raise click.UsageError(f"give --{verb} IDs or --{verb} --all, not both")
    if not every and not ids:
        raise click.UsageError(f"--{verb} needs the ID of a dead letter (as listed) or --all")
    return verb, None if every else ids


def _act_on_dead(
    session: Session, name: str, verb: str, ids: list[str] | None, as_json: bool
) -> None:
    broker = session.client.broker
    act = broker.requeue_dead if verb == "requeue" else broker.drop_dead
    done = "requeued" if verb == "requeue" else "dropped"
    try:
        if verb == "requeue":
            _pending_again(session, name, ids)
        count = act(name, ids)
    except UnknownDeadLetters as exc:
        raise Failure(f"{exc}; nothing was {done}", EXIT_USAGE) from None
    if as_json:
        click.echo(gojson.encode_value({"queue": name, done: count}))
    elif verb == "requeue":
        click.echo(f"requeued {count} message(s) to {name}")
    else:
        click.echo(f"dropped {count} dead letter(s) of {name}")


def _pending_again(session: Session, name: str, ids: list[str] | None) -> None:
    """Record the tasks about to be requeued PENDING, as when they were first sent: their
    FAILURE (why they were set aside) must not pass for a finished task's when a message
    comes back redelivered, and whoever waits on one sees it is on its way again."""
    letters = session.client.broker.dead_letters(name, REQUEUE_READ_MAX)
    if ids is not None:
        missing = set(ids) - {letter.id for letter in letters}
        if missing:
            driver = session.client.broker.driver
            raise UnknownDeadLetters(driver, name, [i for i in ids if i in missing])
        letters = [letter for letter in letters if letter.id in ids]
    now = GoTime.now()
    pending = [
        TaskState(task_id, State.PENDING, task_name=task_name, created_at=now)
        for task_id, task_name in (identity_of(letter.body) for letter in letters)
        if task_id
    ]
    if pending:
        session.client.backend.set_states(pending)


def shown(body: bytes) -> str:
    """A message body as text; bytes that are not UTF-8 escaped (``\\xff``), not replaced."""
    return body.decode("utf-8", "backslashreplace")
