"""taskctl queue stats|peek|purge|dead: looking into queues."""

from __future__ import annotations

import click

from taskd.cli.session import Session, pass_session
from taskd.wire import gojson


@click.group()
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
