"""An application's task module that configures structlog for itself when imported (its own
renderer, on stdout), as many applications do in their package's ``__init__``."""

from __future__ import annotations

import structlog

from taskd import task

structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
    logger_factory=structlog.PrintLoggerFactory(),
)


@task
def app_double(number: int) -> int:
    structlog.get_logger("app").info("app_doubling", number=number)
    return 2 * number
