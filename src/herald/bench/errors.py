"""The benchmark's one error type."""


class BenchError(RuntimeError):
    """The benchmark could not run (a dependency missing, Herald did not start)."""
