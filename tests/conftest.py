"""Shared fixtures. Every test that takes `runtime` (or `api`, `pipeline`) runs twice:
on the embedded backends (SQLite + in-process bus) and on the production ones
(PostgreSQL + Kafka, marked `production`, `postgres` and `kafka`)."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.herald",
    "tests.fixtures.serve",
    "tests.fixtures.console",
    "tests.fixtures.browser",
]


import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """One id per test run, inherited by the xdist workers (it names the run's databases)."""
    import os
    import uuid

    os.environ.setdefault("HERALD_TEST_RUN", uuid.uuid4().hex[:8])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, so a fixture's teardown can tell that the test
    failed (the herald launcher then prints its processes' logs)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run the tests marked `long`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # A test that needs PostgreSQL or Kafka is a production test: `-m "not production"`
        # (the quick loop the README gives) must leave it out, marked by hand or not.
        needs_services = item.get_closest_marker("postgres") or item.get_closest_marker("kafka")
        if needs_services and item.get_closest_marker("production") is None:
            item.add_marker(pytest.mark.production)
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long run: pass --long to include it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
