"""Process exit statuses of ``taskd`` and ``taskctl``, in one place."""

EXIT_OK = 0  # asked to stop and stopped cleanly; or the task succeeded
EXIT_FAILURE = 1  # the task failed; or taskd could not run (a plugin will not load...)
EXIT_USAGE = 2  # bad command line or bad configuration
EXIT_NOT_FINISHED = 3  # taskctl: the task had not finished when the wait ended
EXIT_NO_SUCH_TASK = 4  # taskctl: no state is stored for that id (never sent, or expired)
EXIT_CANCELLED = 5  # taskctl: the confirmation prompt was answered no
EXIT_UNAVAILABLE = 69  # taskctl: the broker or backend cannot be reached (sysexits EX_UNAVAILABLE)
EXIT_DRIVER_ERROR = 70  # taskctl: the broker or backend answered with an error (EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # taskctl: interrupted (Ctrl-C)
# Between the supervisor and its children only: a child could not start; do not respawn it.
EXIT_CHILD_BOOT_FAILURE = 4
# ...and: a child reached worker.max_tasks_per_child or max_memory_per_child and left, its
# work settled or handed back; replace it at once (not a crash: no backoff).
EXIT_CHILD_RECYCLE = 75  # sysexits' EX_TEMPFAIL: a fresh child takes over

# What taskctl's --help and man page list, in this order.
TASKCTL_EXIT_STATUSES = (
    (EXIT_OK, "the task succeeded, or the command did its job"),
    (EXIT_FAILURE, "the task failed (its error on stderr); for a group, any member failed"),
    (
        EXIT_USAGE,
        "usage or configuration error (bad option, dead-letter id, document or config file)",
    ),
    (EXIT_NOT_FINISHED, "the task had not finished when the wait ended"),
    (EXIT_NO_SUCH_TASK, "no state is stored for the id (never sent, or expired)"),
    (EXIT_CANCELLED, "the confirmation prompt was answered no"),
    (EXIT_UNAVAILABLE, "the broker or result backend cannot be reached"),
    (EXIT_DRIVER_ERROR, "the broker or result backend answered with an error"),
    (EXIT_INTERRUPTED, "interrupted"),
)
