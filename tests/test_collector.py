"""herald.collector: a started process freezes what start-up built out of collections."""

from __future__ import annotations

import json
import subprocess
import sys

from herald.collector import YOUNG_THRESHOLD

# In a process of its own: freezing the test runner's objects would change every later test.
PROBE = """
import gc, json
import herald.api.app, herald.runtime  # what a role imports before it starts
from herald.collector import settle_after_startup
before = len(gc.get_objects())
settle_after_startup()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "tracked": len(gc.get_objects()), "threshold": gc.get_threshold()}))
"""


def test_settling_freezes_what_exists_and_collects_the_young_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    found = json.loads(done.stdout)
    assert found["frozen"] > 0.9 * found["before"]  # nearly all of it: only garbage is freed
    assert found["tracked"] < 0.01 * found["before"]  # what a full collection still walks
    assert found["threshold"][0] == YOUNG_THRESHOLD
