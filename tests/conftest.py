"""Shared fixtures. Every test that takes `runtime` (or `api`, `pipeline`) runs twice:
on the embedded backends (SQLite + in-process bus) and on the production ones
(PostgreSQL + Kafka, marked `production`, `postgres` and `kafka`)."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.herald", "tests.fixtures.serve"]
