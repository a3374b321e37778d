"""``taskctl``: send tasks, read results, look into queues. Exit statuses: ``exitcodes``."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from taskd import __version__
from taskd.cli import documents, taskctl_queue, taskctl_workers, taskctl_workflows
from taskd.cli.params import ISO_TIME, TYPED_ARG, config_option
from taskd.cli.session import (
    Group,
    Session,
    finish,
    finish_group,
    member_states,
    pass_session,
    waited,
)
from taskd.client import signature
from taskd.errors import ArgumentError, DocumentError
from taskd.exitcodes import TASKCTL_EXIT_STATUSES
from taskd.wire import Arg, Signature

EPILOG = "\b\nExit status:\n" + "\n".join(
    f"  {code:<4}{meaning}" for code, meaning in TASKCTL_EXIT_STATUSES
)


# color: click would strip escape sequences from what goes to a pipe or file, altering message
# bodies and results; they go as they are, and are shown as escapes on a terminal (Group).
@click.group(
    cls=Group,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "color": True},
)
@config_option
@click.version_option(__version__, prog_name="taskctl")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """taskctl: talk to a taskd queue."""
    session = Session(config_path)
    ctx.obj = session
    ctx.call_on_close(session.close)


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
    time_limit: float | None,
    soft_time_limit: float | None,
) -> Signature:
    if eta is not None and countdown is not None:
        raise click.UsageError("give --eta or --countdown, not both")
    try:
        callbacks = {
            option: [documents.from_text(text) for text in texts]
            for option, texts in (("on_success", on_success), ("on_error", on_error))
        }
    except (ArgumentError, DocumentError, ValueError) as exc:
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
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
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
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0),
    help="Kill it after this many seconds (0: none), overriding its own limit.",
)
@click.option(
    "--soft-time-limit",
    type=click.FloatRange(min=0),
    help="Raise SoftTimeLimitExceeded in it after this many seconds (0: none).",
)
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
    try:
        sig = session.client.prepare(_sent_signature(name, args, **options))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    (sent,) = session.client.publish([sig])
    if wait_s is None:
        click.echo(sent.encode().decode() if as_json else sent.uuid)
        return
    result = session.client.result(sent.uuid)
    finish(waited(lambda: result.wait(wait_s)), sent.uuid, as_json)


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

    Exit 0 SUCCESS, 1 FAILURE, 3 not finished, 4 no such task.
    """
    if not task_id.strip():
        raise click.UsageError("TASK_ID must not be empty")
    # A wait registers with the backend (a write, on Redis); a look only reads.
    client = session.reader if wait_s is None else session.client
    group = client.group_result(task_id) if task_id.startswith("group_") else None
    if group is not None:
        finish_group(member_states(group, wait_s), group.member_ids, as_json)
    single = client.result(task_id)
    if wait_s is None:
        finish(single.state(), task_id, as_json)
    finish(waited(lambda: single.wait(wait_s)), task_id, as_json)


# -- the other commands ----------------------------------------------------------------------


for command in (
    *taskctl_workflows.COMMANDS,
    taskctl_queue.queue,
    taskctl_workers.workers,
    taskctl_workers.revoke,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
