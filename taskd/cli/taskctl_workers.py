"""taskctl workers and taskctl revoke: the live daemons, and stopping tasks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from taskd.boards import listed
from taskd.cli.session import Session, pass_session
from taskd.errors import DecodeError
from taskd.exitcodes import EXIT_NO_SUCH_TASK, EXIT_OK
from taskd.revocations import Revoke
from taskd.wire import GoTime, gojson


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object a daemon.")
@pass_session
def workers(session: Session, as_json: bool) -> None:
    """List live taskd daemons and what their children run.

    Every daemon sharing this result backend; one drops out within worker.consumer_timeout
    of its last beat."""
    live = session.reader.workers()
    if as_json:
        click.echo(gojson.encode_value(live))
        return
    if not live:
        click.echo("no live workers", err=True)
        return
    now = GoTime.now()
    for daemon in live:
        children = [child for child in listed(daemon.get("children")) if isinstance(child, dict)]
        failed = daemon.get("tasks_failed", 0)
        click.echo(
            f"{daemon.get('host')}:{daemon.get('pid')}  taskd {daemon.get('version')}"
            f"  queues {','.join(map(str, listed(daemon.get('queues'))))}"
            f"  children {len(children)}/{daemon.get('concurrency')}"
            f"  done {daemon.get('tasks_done', 0)} ({failed} failed)"
            f"  up {_age(daemon.get('started_at'), now)}"
            f"  beat {_age(daemon.get('beat_at'), now)} ago"
        )
        for child in children:
            click.echo(f"  child {child.get('slot')}  pid {child.get('pid')}  {_doing(child, now)}")


def _doing(child: dict[str, Any], now: GoTime) -> str:
    task = child.get("task")
    if not isinstance(task, dict) or not task:
        return "idle"
    return f"running {task.get('name')} {task.get('id')} for {_age(task.get('started_at'), now)}"


def _age(when: Any, now: GoTime) -> str:
    """How long ago an RFC 3339 time was, for people: 0.4s, 12s, 5m03s, 2h10m."""
    try:
        seconds = max((now.unix_ns - GoTime.parse(str(when)).unix_ns) / 1e9, 0.0)
    except DecodeError:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


SAID = {
    Revoke.REVOKED: "revoked: it will not run",
    Revoke.TERMINATING: "revoked: running, its worker stops it now",
    Revoke.RUNNING: "revoked, but running: it finishes (--terminate stops it)",
}


@click.command()
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Stop it if it is running (its child is killed).")
@pass_session
def revoke(session: Session, task_ids: Sequence[str], terminate: bool) -> None:
    """Revoke tasks, so that they never run (--terminate: stop running ones too).

    A revoked task that has not started never runs (also when it waits for an ETA or a
    retry) and ends FAILURE with the error "revoked"; with --terminate a running one is
    stopped and ends the same way. Revocations last results_expire_in. Exit 4 if an ID has
    no stored state."""
    if any(not task_id.strip() for task_id in task_ids):
        raise click.UsageError("an ID must not be empty")
    status = EXIT_OK
    for revocation in session.client.revoke(task_ids, terminate=terminate):
        task_id, outcome, state = revocation.task_id, revocation.outcome, revocation.state
        if outcome is Revoke.UNKNOWN:
            click.echo(f"{task_id}: no state is stored (never sent, or expired)", err=True)
            status = EXIT_NO_SUCH_TASK
        elif outcome is Revoke.FINISHED:
            assert state is not None
            click.echo(f"{task_id}: not revoked, it had finished: {state.state.value}")
        else:
            click.echo(f"{task_id}: {SAID[outcome]}")
    sys.exit(status)
