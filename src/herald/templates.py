"""Templates: Jinja2 in a sandbox, per locale, per channel.

A template is {"locales": {"en": {"push": {"title", "body"}, "email": {"subject", "text",
"html"}, "sms": {"body"}, "in_app": {"title", "body"}}, ...}, "default_locale": "en"}.
User-supplied templates run in Jinja2's ImmutableSandboxedEnvironment (no attribute access
to internals, no imports or includes, no file access, no mutating lists or dicts), with
StrictUndefined so a missing variable is an error, autoescaping for the HTML part only.

A template cannot run for long or fill memory. Every rendering has a budget: loop
iterations and calls (macros, methods) are counted, and so are the characters it produces,
buffered or not (macro bodies, `{% set %}` blocks); no single value it builds (by `*`, `+`,
`~`, `%`, format widths, filters such as center, indent, replace or join) may exceed the
output limit, checked before the value is built where it could be large; integers stay
small; range() is limited. Breaking a limit refuses the template with a TemplateError.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from herald.domain import Channel

CHANNEL_FIELDS: dict[Channel, tuple[str, ...]] = {
    Channel.PUSH: ("title", "body"),
    Channel.EMAIL: ("subject", "text", "html"),
    Channel.SMS: ("body",),
    Channel.IN_APP: ("title", "body"),
    Channel.WEBHOOK: ("title", "body"),
    Channel.CHAT: ("title", "body"),
    Channel.WHATSAPP: ("body",),
}
MAX_SOURCE_CHARS = 20_000
MAX_OUTPUT_CHARS = 100_000  # a rendered part, and any one value a template builds
MAX_RANGE = 1_000
MAX_STEPS = 10_000  # loop iterations and calls in one rendering
MAX_VOLUME = 1_000_000  # characters produced in one rendering, buffered or not
MAX_INT_BITS = 4_096
MAX_EXPONENT = 64


class TemplateError(ValueError):
    """A template that does not compile or render; `where` says which part."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


# -- the per-rendering budget ----------------------------------------------------------------


class _Budget:
    __slots__ = ("steps", "volume")

    def __init__(self) -> None:
        self.steps = 0
        self.volume = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SecurityError(f"more than {MAX_STEPS} loop iterations and calls")

    def produce(self, chars: int) -> None:
        self.volume += chars
        if self.volume > MAX_VOLUME:
            raise SecurityError(f"produces more than {MAX_VOLUME} characters")


_BUDGET: ContextVar[_Budget | None] = ContextVar("herald_template_budget", default=None)


def _budget() -> _Budget:
    # Outside render_part (compile-time constant folding) the limits apply per operation.
    return _BUDGET.get() or _Budget()


def _limit(size: int, what: str = "a value") -> None:
    if size > MAX_OUTPUT_CHARS:
        raise SecurityError(f"{what} would be over {MAX_OUTPUT_CHARS} characters")


def _weight(value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
    """Characters (or items) in a value, counting nested containers, stopping once over
    `limit` so that weighing a large value is itself cheap."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    if isinstance(value, dict):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 1
    total = 1
    for item in items:
        total += 1 + _weight(item, limit - total)
        if total > limit:
            break
    return total


def _sized(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"integers are limited to {MAX_INT_BITS} bits")
    elif _weight(value) > MAX_OUTPUT_CHARS:
        raise SecurityError(f"a value is over {MAX_OUTPUT_CHARS} characters or items")
    return value


def _finalize(value: Any) -> Any:
    """Applied to every {{ expression }} output, including into macro and block buffers."""
    budget = _budget()
    budget.produce(_weight(value, MAX_VOLUME - budget.volume + 1))
    return value


# -- format strings ------------------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(text: str) -> None:
    for match in _PERCENT_SPEC.finditer(text):
        for number in match.groups():
            if number == "*":
                raise SecurityError("'*' widths are not allowed in format strings")
            if number is not None:
                _limit(int(number), "a format width")


def _check_brace_format(text: str, depth: int = 0) -> bool:
    """Refuse literal widths over the limit; True when a width comes from an argument
    ('{:{w}}'), whose numbers the caller then checks."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return False  # format() itself says what is wrong
    nested = False
    for _, _, spec, _ in parsed:
        if not spec:
            continue
        for number in re.findall(r"\d+", spec):
            _limit(int(number), "a format width")
        if "{" in spec:
            nested = True
            if depth < 2:
                _check_brace_format(spec, depth + 1)
    return nested


def _check_numbers(values: Iterable[Any]) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            _limit(abs(value), "a number passed to a format string")


def _replace_size(text: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _join_size(separator: Any, items: list[Any]) -> int:
    each = sum(_weight(item, MAX_OUTPUT_CHARS + 1) for item in items[: MAX_OUTPUT_CHARS + 1])
    return each + max(len(items) - 1, 0) * _weight(separator)


def _width(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> int:
    value = args[index] if len(args) > index else kwargs.get(name, 0)
    return value if isinstance(value, int) else 0


# -- filters --------------------------------------------------------------------------------


def _check_filter(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse filter calls whose result could be large before computing it. `args[0]` is
    the filtered value; joins get their items as a list (see _guard_filter)."""
    value = args[0] if args else None
    text = value if isinstance(value, str) else ""
    rest = tuple(args[1:])
    if name == "center":
        _limit(_width(rest, kwargs, 0, "width"), "center()")
    elif name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _limit(len(text) + (text.count("\n") + 2) * per_line, "indent()")
    elif name == "wordwrap":
        width = max(_width(rest, kwargs, 0, "width") or 79, 1)
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        _limit(len(text) + (len(text) // width + 1) * _weight(wrap), "wordwrap()")
    elif name == "replace":
        old = rest[0] if rest else None
        new = rest[1] if len(rest) > 1 else None
        count = rest[2] if len(rest) > 2 else kwargs.get("count", -1)
        _limit(_replace_size(text, old, new, count), "replace()")
    elif name == "join":
        separator = rest[0] if rest else kwargs.get("d", "")
        _limit(_join_size(separator, value if isinstance(value, list) else []), "join()")
    elif name == "format":
        _check_percent_format(text)
    elif name in ("batch", "slice"):
        _limit(abs(_width(rest, kwargs, 0, "linecount" if name == "batch" else "slices")))
    elif name == "sum":
        start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
        if not isinstance(start, int | float):
            raise SecurityError("sum() adds numbers only")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(func, "jinja_pass_arg", None) else 0  # context/environment first

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        arguments = list(args)
        if name == "join" and len(arguments) > skip and not isinstance(arguments[skip], str):
            arguments[skip] = list(arguments[skip])  # to weigh the items before joining
        _check_filter(name, arguments[skip:], kwargs)
        return _sized(func(*arguments, **kwargs))

    return guarded


@jinja2.pass_context  # never folded at compile time: it counts a rendering's iterations
def _loop_guard(_context: Any, iterable: Any, body_chars: int) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        budget.produce(body_chars)
        yield item


def _concat_guard(value: Any) -> Any:
    _limit(len(value), "a ~ concatenation")
    return value


class _GuardLoopsAndConcats(NodeTransformer):
    """Every for loop iterates through _loop_guard (charging each iteration with the
    template text in its body); every `~` result goes through _concat_guard."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        body_chars = sum(len(data.data) for data in node.find_all(nodes.TemplateData))
        node.iter = nodes.Filter(
            node.iter, "_herald_loop", [nodes.Const(body_chars)], [], None, None
        ).set_lineno(node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, "_herald_concat", [], [], None, None).set_lineno(node.lineno)


# -- the environment ------------------------------------------------------------------------


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """Refuses the operations that could make a template run for long or fill memory."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, autoescape: bool) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=autoescape,
            auto_reload=False,
            finalize=_finalize,
        )
        self.globals = {"range": range}
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["_herald_loop"] = _loop_guard
        self.filters["_herald_concat"] = _concat_guard

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        guarded = _GuardLoopsAndConcats().visit(source)
        return super()._generate(guarded, name, filename, defer_init=defer_init)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map are wrapped when they are looked up; their widths are
        checked before they format."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, name = value.__self__, value.__name__

        @wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_str_method(text, name, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        if __obj is range:
            if len(range(*args)) > MAX_RANGE:
                raise SecurityError(f"range() is limited to {MAX_RANGE} items")
        elif isinstance(getattr(__obj, "__self__", None), str):
            args = _check_str_method(__obj.__self__, __obj.__name__, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(__obj, Macro | BlockReference | LoopContext):
            _budget().produce(_weight(result, MAX_VOLUME + 1))
        return _sized(result)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _is_int(left) and _is_int(right):
            if abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents are limited to {MAX_EXPONENT}")
            if left.bit_length() * max(right, 0) > MAX_INT_BITS:
                raise SecurityError(f"integers are limited to {MAX_INT_BITS} bits")
        elif operator == "*":
            if _is_int(left) and _is_int(right):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError(f"integers are limited to {MAX_INT_BITS} bits")
            else:
                for sequence, count in ((left, right), (right, left)):
                    if _is_int(count) and isinstance(sequence, str | list | tuple):
                        _limit(_weight(sequence) * max(count, 0), "a repetition")
        elif operator == "+" and not (_is_int(left) or _is_int(right)):
            _limit(_weight(left) + _weight(right), "a + concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return _sized(super().call_binop(context, operator, left, right))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str_method(
    text: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Refuse string methods whose result could be large before calling them; returns the
    arguments to call with (join's items as a list, so they can be weighed first)."""
    if name in ("center", "ljust", "rjust", "zfill"):
        _limit(_width(args, kwargs, 0, "width"), f"{name}()")
    elif name == "expandtabs":
        tabsize = _width(args, kwargs, 0, "tabsize") or 8
        _limit(len(text) + text.count("\t") * tabsize, "expandtabs()")
    elif name == "replace":
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        old = args[0] if args else None
        new = args[1] if len(args) > 1 else None
        _limit(_replace_size(text, old, new, count), "replace()")
    elif name == "join" and args:
        items = list(args[0])
        _limit(_join_size(text, items), "join()")
        return (items, *args[1:])
    elif name in ("format", "format_map") and _check_brace_format(text):
        values = list(args) + list(kwargs.values())
        if name == "format_map" and args and isinstance(args[0], Mapping):
            values = list(args[0].values())
        _check_numbers(values)
    return args


_PLAIN = _LimitedSandbox(autoescape=False)
_HTML = _LimitedSandbox(autoescape=True)


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
    except RecursionError:
        raise TemplateError(where, "nested too deeply") from None
    except Exception as error:  # anything else a user's source provokes is its own fault
        raise TemplateError(where, f"does not compile: {type(error).__name__}: {error}") from None


def render_part(where: str, source: str, variables: Mapping[str, Any], html: bool = False) -> str:
    template = compile_part(where, source, html)
    token = _BUDGET.set(_Budget())
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateError(where, f"renders to more than {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateError:
        raise
    except jinja2.UndefinedError as error:
        raise TemplateError(where, f"missing variable: {error.message}") from None
    except SecurityError as error:
        raise TemplateError(where, f"not allowed: {error}") from None
    except RecursionError:
        raise TemplateError(where, "recursion too deep") from None
    except MemoryError:
        raise TemplateError(where, "needs too much memory") from None
    except Exception as error:  # a user's template failing is a template error, whatever it is
        raise TemplateError(where, f"{type(error).__name__}: {error}") from None
    finally:
        _BUDGET.reset(token)


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
