"""The daemon's workers: a prefork supervisor and the children that run tasks."""
