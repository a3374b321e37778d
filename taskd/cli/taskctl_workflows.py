"""taskctl chain|group|chord FILE: workflows from YAML or JSON documents."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from taskd import workflows
from taskd.cli import documents
from taskd.cli.session import (
    Session,
    finish_group,
    member_states,
    pass_session,
    progress_bar,
    show,
    waited,
)
from taskd.errors import DocumentError
from taskd.wire import Signature


def _read_document(file: str) -> Any:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read {file}: {exc.strerror}") from None
    try:
        return documents.load(text, "stdin" if file == "-" else file)
    except DocumentError as exc:
        raise click.UsageError(str(exc)) from None


def _in_queue(sigs: Sequence[Signature], queue: str | None) -> list[Signature]:
    return [sig.with_changes(routing_key=sig.routing_key or queue or "") for sig in sigs]


def _parsed(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except DocumentError as exc:
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


@click.command()
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
        sys.exit(show(waited(lambda: sent.wait(wait_s)), as_json, with_id=False))


@click.command()
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
        finish_group(member_states(sent, wait_s), sent.member_ids, as_json)


@click.command()
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
    ids, the callback's id and the error callback's (if any); with --wait, then the callback's
    result (exit 1, with the member's error, if a member failed).
    """
    members, callback, error_callback = _parsed(
        lambda: documents.parse_chord(_read_document(file), file)
    )
    (callback,) = _in_queue([callback], queue)
    workflow = workflows.chord(_in_queue(members, queue), callback, error_callback)
    sent = session.client.send_chord(workflow, send_concurrency)
    error_ids = [workflow.callback.on_error[-1].uuid] if error_callback is not None else []
    for line in (sent.group.group_id, *sent.group.member_ids, sent.task_id, *error_ids):
        click.echo(line)
    if wait_s is not None:
        with progress_bar(True) as progress:
            state = waited(lambda: sent.wait(wait_s, progress))
        sys.exit(show(state, as_json, with_id=False))


COMMANDS = (chain, group, chord)
