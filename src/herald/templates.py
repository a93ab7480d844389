"""Templates: Jinja2 in a sandbox, per locale, per channel.

A template is {"locales": {"en": {"push": {"title", "body"}, "email": {"subject", "text",
"html"}, "sms": {"body"}, "in_app": {"title", "body"}}, ...}, "default_locale": "en"}.
User-supplied templates run in Jinja2's SandboxedEnvironment (no attribute access to
internals, no imports, no file access), with StrictUndefined so a missing variable is an
error, autoescaping for the HTML part only, and limits on the size of what they produce
and on range() so a template cannot loop forever or fill memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from herald.domain import Channel

CHANNEL_FIELDS: dict[Channel, tuple[str, ...]] = {
    Channel.PUSH: ("title", "body"),
    Channel.EMAIL: ("subject", "text", "html"),
    Channel.SMS: ("body",),
    Channel.IN_APP: ("title", "body"),
}
MAX_SOURCE_CHARS = 20_000
MAX_OUTPUT_CHARS = 100_000
MAX_RANGE = 1_000


class TemplateError(ValueError):
    """A template that does not compile or render; `where` says which part."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class _LimitedSandbox(SandboxedEnvironment):
    """Refuses the operations that could make a template run for long or fill memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj is range and len(range(*args)) > MAX_RANGE:
            raise jinja2.exceptions.SecurityError(f"range() is limited to {MAX_RANGE} items")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise jinja2.exceptions.SecurityError("exponents are limited to 64")
        if operator == "*" and _repeats_too_much(left, right):
            raise jinja2.exceptions.SecurityError(f"repetition is limited to {MAX_OUTPUT_CHARS}")
        return super().call_binop(context, operator, left, right)


def _repeats_too_much(left: Any, right: Any) -> bool:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            return len(sequence) * count > MAX_OUTPUT_CHARS
    return False


def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = _LimitedSandbox(
        undefined=jinja2.StrictUndefined, autoescape=autoescape, auto_reload=False
    )
    env.globals = {"range": range}
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> jinja2.Template:
    return (_HTML if html else _PLAIN).from_string(source)


def compile_part(where: str, source: str, html: bool = False) -> jinja2.Template:
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateError(where, f"longer than {MAX_SOURCE_CHARS} characters")
    try:
        return _compile(source, html)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(where, f"line {error.lineno}: {error.message}") from None


def render_part(where: str, source: str, variables: Mapping[str, Any], html: bool = False) -> str:
    template = compile_part(where, source, html)
    try:
        rendered = template.render(**variables)
    except jinja2.UndefinedError as error:
        raise TemplateError(where, f"missing variable: {error.message}") from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateError(where, f"not allowed: {error}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as error:
        raise TemplateError(where, f"{type(error).__name__}: {error}") from None
    if len(rendered) > MAX_OUTPUT_CHARS:
        raise TemplateError(where, f"renders to more than {MAX_OUTPUT_CHARS} characters")
    return rendered


@dataclass(frozen=True, slots=True)
class Template:
    locales: dict[str, dict[str, dict[str, str]]]
    default_locale: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Template:
        return cls(locales=dict(raw["locales"]), default_locale=str(raw["default_locale"]))

    def locale_for(self, locale: str, channel: Channel | None = None) -> str:
        """The variant to use: the user's locale, its language ('de' for 'de-AT'), else the
        default; with a channel, only variants that have that channel count."""
        for candidate in (locale, locale.split("-")[0].split("_")[0], self.default_locale):
            variant = self.locales.get(candidate)
            if variant is not None and (channel is None or channel.value in variant):
                return candidate
        return self.default_locale

    def validate(self) -> None:
        """Compile every part; raises TemplateError naming the first that fails."""
        if self.default_locale not in self.locales:
            raise TemplateError("default_locale", f"{self.default_locale!r} has no variant")
        for locale, channels in self.locales.items():
            for channel, parts in channels.items():
                for name, source in parts.items():
                    compile_part(f"locales.{locale}.{channel}.{name}", source, name == "html")

    def render(
        self, channel: Channel, locale: str, variables: Mapping[str, Any]
    ) -> dict[str, str] | None:
        """The channel's parts rendered, or None when no variant has that channel."""
        chosen = self.locale_for(locale, channel)
        parts = self.locales.get(chosen, {}).get(channel.value)
        if parts is None:
            return None
        return {
            name: render_part(
                f"locales.{chosen}.{channel.value}.{name}", source, variables, name == "html"
            )
            for name, source in parts.items()
        }

    def render_all(self, locale: str, variables: Mapping[str, Any]) -> None:
        """Render every channel for a locale (a dry run when a notification is posted)."""
        for channel in Channel:
            self.render(channel, locale, variables)
