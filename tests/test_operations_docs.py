"""docs/prometheus/herald.rules.yml: every metric its expressions name is one Herald
exports, and promtool (when installed) loads the file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from herald.metrics import METRICS

RULES = Path(__file__).resolve().parents[1] / "docs" / "prometheus" / "herald.rules.yml"
CACHE = Path(os.environ.get("HERALD_CACHE_DIR", Path.home() / ".cache" / "herald"))
# On PATH, or where scripts/promtool (run by scripts/test) unpacked it.
PROMTOOL = shutil.which("promtool") or next(
    (str(p) for p in [CACHE / "promtool" / "usr" / "bin" / "promtool"] if p.exists()), None
)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names(*registries: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def named_metrics(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expression)
    return set(re.findall(r"\bherald_[a-z_]+\b", without_strings))


def rules() -> list[dict[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_metric_the_rules_name_is_exported() -> None:
    exported = exported_names(METRICS.registry, METRICS.backlog_registry)
    named = set().union(*(named_metrics(rule["expr"]) for rule in rules()))
    assert named, "the rules name no metric"
    assert named - exported == set()
    assert len([r for r in rules() if "alert" in r]) >= 10


def test_the_checker_catches_a_misspelt_metric() -> None:
    exported = exported_names(METRICS.registry)
    assert named_metrics('rate(herald_deliveries_finishd_total{state="x"}[5m])') - exported


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (scripts/promtool)")
def test_promtool_loads_the_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
