"""Command lines: ``taskd`` (the daemon) and ``taskctl`` (talk to a queue)."""
