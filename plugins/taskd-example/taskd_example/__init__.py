"""Example taskd tasks: machinery's example set, plus sum, sleep and fail."""
