"""Python's garbage collector, set for a long-running role.

What a process builds while it starts (the modules, the app and its schemas, SQLAlchemy's
metadata, the pools) lives as long as the process. Left in the collector's oldest
generation, every full collection walked all of it. Frozen (`gc.freeze`), a full collection
walks only what the work allocated since. The young generation's threshold is raised from
700 to 10,000 allocations: a batch of a few hundred notifications allocates thousands of
short-lived objects, and at 700 each batch paid several collections for objects that were
about to die anyway. Figures: docs/benchmarks.md, "Figures behind code choices".
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle_after_startup() -> None:
    """Freeze what exists now out of future collections, and collect the young generation
    less often. Call once, when the process has started and before it takes work."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
