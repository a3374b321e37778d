"""Tasks the benchmark loads into the daemon (through the imports: key)."""

from taskd import task


@task
def noop() -> None:
    """Nothing: what remains is the queue's own cost."""
