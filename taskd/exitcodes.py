"""Process exit statuses of ``taskd`` and ``taskctl``, in one place."""

EXIT_OK = 0  # asked to stop and stopped cleanly; or the task succeeded
EXIT_FAILURE = 1  # the task failed; or taskd could not run (a plugin will not load...)
EXIT_USAGE = 2  # bad command line or bad configuration
EXIT_NOT_FINISHED = 3  # taskctl: the task had not finished when the wait ended
EXIT_CHILD_BOOT_FAILURE = 4  # a worker child could not start; the supervisor must not respawn it
