"""`herald bench`: the end-to-end benchmark with a naive baseline beside it."""

from herald.bench.errors import BenchError
from herald.bench.harness import BenchConfig, run_bench
from herald.bench.report import REPORT_KEYS

__all__ = ["REPORT_KEYS", "BenchConfig", "BenchError", "run_bench"]
