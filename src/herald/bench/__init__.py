"""`herald bench`: the end-to-end benchmark with a naive baseline beside it."""

from herald.bench.harness import BenchConfig, BenchError, run_bench
from herald.bench.report import REPORT_KEYS

__all__ = ["REPORT_KEYS", "BenchConfig", "BenchError", "run_bench"]
