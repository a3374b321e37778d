"""``taskd``: the daemon. ``taskd start`` runs in the foreground, as systemd expects."""

from __future__ import annotations

import sys

import click

from taskd import __version__, logs
from taskd.cli.params import ConfigFailure, config_option, load
from taskd.config import LOG_LEVELS, dump, embedded_url
from taskd.errors import ConfigError, PluginError
from taskd.exitcodes import EXIT_FAILURE
from taskd.registry import load_registry
from taskd.worker.liveness import MAX_CHILDREN
from taskd.worker.supervisor import Supervisor


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskd")
def main() -> None:
    """taskd: run task workers for a machinery-compatible queue."""


@main.command()
@config_option
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CHILDREN),
    help="Worker processes (default: worker.concurrency, else one per CPU it may use).",
)
@click.option("--queue", help="Queue to consume (default: default_queue).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Override log_level.")
def start(
    config_path: str | None, concurrency: int | None, queue: str | None, log_level: str | None
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    config = load(config_path, [queue] if queue else [], log_level=log_level, serves=True)
    log = logs.get_logger("taskd")
    for key, reason in config.ignored:  # machinery's keys that mean nothing to taskd
        log.info("config_key_ignored", key=key, reason=reason, config=config.source)
    try:
        registry = load_registry(config.imports)
    except PluginError as exc:
        log.critical("plugin_failed", plugin=exc.plugin, error=str(exc))
        sys.exit(EXIT_FAILURE)
    if not registry.names():
        log.warning("no_tasks_registered", hint="install a task plugin or set imports:")
    if config.result_backend == embedded_url() and config.broker != embedded_url():
        log.warning(
            "results_stored_locally",
            result_backend=config.result_backend,
            hint="other hosts cannot read them: set result_backend",
        )
    try:
        supervisor = Supervisor(
            config, registry, queue=queue, concurrency=concurrency, config_path=config_path
        )
    except ConfigError as exc:  # metrics.listen cannot be bound: a port in use, say
        raise ConfigFailure(str(exc)) from None
    sys.exit(supervisor.run())


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration (and that its imports load) and print it, with secrets
    redacted."""
    config = load(config_path, serves=True)
    try:
        load_registry(config.imports)
    except PluginError as exc:
        if exc.plugin in config.imports:
            raise ConfigFailure(str(ConfigError("imports", str(exc), config.source))) from None
        raise click.ClickException(str(exc)) from None
    for key, reason in config.ignored:  # machinery's keys that mean nothing to taskd
        click.echo(f"{config.source}: {key}: accepted and ignored: {reason}", err=True)
    click.echo(dump(config), nl=False)


@main.command()
@config_option
def tasks(config_path: str | None) -> None:
    """List the tasks the installed plugins and imports: provide."""
    config = load(config_path)
    try:
        registry = load_registry(config.imports)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    for name, task in sorted(registry.tasks().items()):
        params = [f"{p.name}: {p.expected}" for p in task.params]
        if task.variadic is not None:
            params.append(f"*{task.variadic.name}: {task.variadic.expected}")
        returns = ", ".join(t or "?" for t in task.returns) or "nothing"
        click.echo(f"{name}({', '.join(params)}) -> {returns}    [{task.source}]")


if __name__ == "__main__":
    main()
