"""Shared fixtures. Every test that takes `runtime` (or `api`, `pipeline`) runs twice:
on the embedded backends (SQLite + in-process bus) and on the production ones
(PostgreSQL + Kafka, marked `production`, `postgres` and `kafka`)."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.herald", "tests.fixtures.serve"]


import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """One id per test run, inherited by the xdist workers (it names the run's databases)."""
    import os
    import uuid

    os.environ.setdefault("HERALD_TEST_RUN", uuid.uuid4().hex[:8])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run the tests marked `long`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long run: pass --long to include it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
