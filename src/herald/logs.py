"""Structured logs: one JSON object per line when stderr is not a terminal, readable
key=value lines when it is. Every logger goes through the same renderer: structlog's own
and the standard library's (uvicorn, alembic, librdkafka's callbacks, ...), so a line-based
collector never sees a bare traceback. Secrets never go in: log calls pass ids, not keys or
tokens."""

from __future__ import annotations

import logging
import sys

import structlog

# Loggers that say, at INFO, what Herald already says in its own words (or nothing an
# operator needs): alembic's "Context impl", "Will assume transactional DDL" and plugin
# set-up lines on every `herald migrate` or `herald keys create`, uvicorn's access log
# (herald.api.access writes one line per request instead).
QUIET_LOGGERS = (
    "uvicorn.access",
    "aiosqlite",
    "alembic",
    "botocore",
    "aiobotocore",
)


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        # They may have handlers of their own (alembic's fileConfig, uvicorn's default
        # config): the root's handler renders them.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
