"""Fault injection and soak runs of a Herald fleet (`herald chaos`)."""

from herald.chaos.run import ChaosOptions, run_chaos

__all__ = ["ChaosOptions", "run_chaos"]
