"""The template sandbox: what a user-supplied template can and cannot do.

Templates come from API callers, so each one is hostile until rendered: it must not reach
files or Python internals, must not run for long or fill memory, and whatever it does it
either renders or fails with a TemplateError that names the part (never another error,
which the API would turn into a 500).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.domain import Channel
from herald.templates import (
    MAX_OUTPUT_CHARS,
    Template,
    TemplateError,
    compile_part,
    render_part,
)

SECRET_FILE_LINE = "root:"  # what /etc/passwd would show


def render(source: str, html: bool = False, **variables: Any) -> str:
    return render_part("locales.en.push.body", source, variables, html)


# -- no way out of the sandbox ---------------------------------------------------------------

ESCAPES = [
    '{% include "/etc/passwd" %}',
    '{% import "/etc/passwd" as p %}{{ p }}',
    '{% from "/etc/passwd" import x %}{{ x }}',
    '{% extends "/etc/passwd" %}',
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ x.__class__.__init__.__globals__ }}",
    "{{ x.mro() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.environment }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ dict.__base__ }}",
    "{{ range.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ config }}{{ request }}{{ os }}",
    "{{ '{0.__class__.__mro__}'.format(x) }}",
    "{{ '{0.__init__.__globals__}'.format(x) }}",
    "{{ '{a.__class__}'.format_map({'a': x}) }}",
    "{{ x|attr('__class__') }}",
    "{{ (x|attr('__class__')).__mro__ }}",
    "{{ x.__getattribute__('__class__') }}",
    "{{ [].append(1) }}",
    "{% set l = [1] %}{{ l.pop() }}",
    "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "{{ lookup.__dict__ }}",
    "{{ lookup.items.__self__.__class__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_a_template_cannot_reach_files_or_python_internals(source: str) -> None:
    with pytest.raises(TemplateError) as raised:
        render(source, x="text", lookup={"a": 1})
    assert raised.value.where == "locales.en.push.body"
    assert SECRET_FILE_LINE not in str(raised.value)


def test_filters_that_look_up_attributes_are_sandboxed_too() -> None:
    # map(attribute=...) yields an undefined for an unsafe attribute; using it is refused.
    assert render("{{ [x]|map(attribute='__class__')|list }}", x="text") == "[Undefined]"
    with pytest.raises(TemplateError, match="unsafe"):
        render("{% for c in [x]|map(attribute='__class__') %}{{ c.__mro__ }}{% endfor %}", x="")


def test_self_renders_nothing_useful() -> None:
    # `self` exists in every Jinja template; all it offers is the template's own blocks.
    assert render("{{ self }}").startswith("<TemplateReference")


def test_harmless_jinja_still_works() -> None:
    source = (
        "{% macro money(v) %}{{ '%.2f'|format(v) }} EUR{% endmacro %}"
        "{% for item in items %}{{ loop.index }}. {{ item.name|title }}: {{ money(item.price) }}"
        "{{ ', ' if not loop.last }}{% endfor %}"
        " | {{ items|map(attribute='name')|join('/') }} | {{ '{:>4}'.format(n) }}"
        " | {{ 'x' * 3 }} | {{ 2 ** 10 }} | {{ 'Order %d' % 1234567 }} | {{ range(3)|list }}"
        " | {% set greeting %}hi {{ name }}{% endset %}{{ greeting|upper }}"
        " | {{ text|truncate(9, true, '~', 0) }} | {{ text|wordwrap(40) }}"
        " | {{ text|replace('a', 'A') }}"
        " | {{ 'Order {}'.format(7654321) }} | {{ [1, 2] + [3] }} | {{ name ~ '!' }}"
    )
    rendered = render(
        source,
        items=[{"name": "tea", "price": 3}, {"name": "cake", "price": 4.5}],
        n=7,
        name="ada",
        text="a lazy afternoon",
    )
    assert rendered == (
        "1. Tea: 3.00 EUR, 2. Cake: 4.50 EUR | tea/cake |    7 | xxx | 1024 | Order 1234567"
        " | [0, 1, 2] | HI ADA | a lazy a~ | a lazy afternoon | A lAzy Afternoon"
        " | Order 7654321 | [1, 2, 3] | ada!"
    )


def test_a_long_but_reasonable_template_renders() -> None:
    rows = [{"sku": f"SKU-{i}", "qty": i} for i in range(500)]
    source = "{% for r in rows %}<tr><td>{{ r.sku }}</td><td>{{ r.qty }}</td></tr>{% endfor %}"
    rendered = render(source, html=True, rows=rows)
    assert rendered.count("<tr>") == 500


# -- bounded time and memory ---------------------------------------------------------------

BOMBS = {
    "nested ranges": (
        "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "nested loops with output": (
        "{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}{% endfor %}{% endfor %}"
    ),
    "nested loops over a string": (
        "{% set s = 'x' * 90000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    ),
    "range too long": "{% for i in range(10 ** 9) %}{% endfor %}",
    "huge range length": "{{ range(10 ** 30)|length }}",
    "string repetition": "{{ 'x' * 10 ** 9 }}",
    "list repetition": "{{ [1] * 10 ** 9 }}",
    "repetition of a repetition": "{% set s = 'x' * 90000 %}{{ [s] * 90000 }}",
    "doubling by ~": "{% set s = 'x' * 90000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}",
    "doubling by +": "{% set s = 'x' * 90000 %}{% set s = s + s %}{% set s = s + s %}{{ s }}",
    "center": "{{ 'x'|center(10 ** 10) }}",
    "ljust": "{{ 'x'.ljust(10 ** 10) }}",
    "zfill": "{{ '1'.zfill(10 ** 10) }}",
    "expandtabs": "{{ ('\t' * 90000).expandtabs(10 ** 6) }}",
    "indent": "{{ ('\n' * 90000)|indent(10 ** 5) }}",
    "wordwrap": "{{ ('x ' * 40000)|wordwrap(1, wrapstring='y' * 90000) }}",
    "replace amplifies": "{% set s = 'x' * 90000 %}{{ s|replace('', s) }}",
    "str.replace amplifies": "{% set s = 'x' * 90000 %}{{ s.replace('x', s) }}",
    "join amplifies": "{% set s = 'x' * 90000 %}{{ range(1000)|join(s) }}",
    "str.join amplifies": "{% set s = 'x' * 90000 %}{{ s.join(range(1000)|map('string')) }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "percent star width": "{{ '%*d' % (999999999, 1) }}",
    "format filter width": "{{ '%999999999s'|format('x') }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "str.format nested width": "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "format_map width": "{{ '{a:>{w}}'.format_map({'a': 1, 'w': 999999999}) }}",
    "huge exponent": "{{ 2 ** (10 ** 10) }}",
    "tower of exponents": "{{ ((10 ** 64) ** 64) ** 64 }}",
    "big integer squaring": (
        "{% set n = 10 ** 60 %}{% for i in range(20) %}{% set n = n * n %}{% endfor %}"
        "{% set m = (10 ** 60) * (10 ** 60) * (10 ** 60) * (10 ** 60) %}"
        "{{ m * m * m * m * m * m * m * m * m * m * m * m * m * m * m * m * m * m }}"
    ),
    "batch of a trillion": "{{ [1]|batch(10 ** 12)|list }}",
    "slice into a billion": "{{ [1]|slice(10 ** 9)|list }}",
    "quadratic sum of lists": "{{ ([[1]] * 50000)|sum(start=[]) }}",
    "recursive macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "branching macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    ),
    "macro buffers a loop": (
        "{% macro m() %}{% for i in range(1000) %}" + "x" * 2000 + "{% endfor %}{% endmacro %}"
        "{% for i in range(1000) %}{% if m() %}{% endif %}{% endfor %}"
    ),
    "set block buffers a loop": (
        "{% set s = 'x' * 90000 %}{% set out %}{% for i in range(1000) %}{{ s }}{% endfor %}"
        "{% endset %}{{ out|length }}"
    ),
    "filter block buffers a loop": (
        "{% filter upper %}{% for i in range(1000) %}{% for j in range(1000) %}"
        "{{ 'x' * 1000 }}{% endfor %}{% endfor %}{% endfilter %}"
    ),
    "recursive block": "{% block b %}{{ self.b() }}{% endblock %}",
    "recursive loop": "{% for x in range(10) recursive %}{{ loop(range(10)) }}{% endfor %}",
    "deep nesting": "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
    "deep list nesting": "{{ " + "[" * 3000 + "]" * 3000 + " }}",
    "output too long": "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}",
}


# "Quickly" is the sandbox's deterministic limits (loop, output, nesting); the timeout only
# stops a run that would hang if one of them were gone, on however slow a machine.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("source", list(BOMBS.values()), ids=list(BOMBS))
def test_runaway_templates_are_refused_quickly_and_in_little_memory(source: str) -> None:
    with pytest.raises(TemplateError) as raised:
        render(source)
    assert raised.value.where == "locales.en.push.body"
    # Again, measuring memory (tracemalloc slows it down, so not timed).
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError):
            render(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"peaked at {peak / 1e6:.0f} MB before refusing"


def test_output_up_to_the_limit_is_fine() -> None:
    assert len(render("{{ 'x' * n }}", n=MAX_OUTPUT_CHARS)) == MAX_OUTPUT_CHARS
    with pytest.raises(TemplateError, match="more than"):
        render("{{ 'x' * n }}{{ 'y' }}", n=MAX_OUTPUT_CHARS)


def test_source_length_is_limited() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        compile_part("locales.en.sms.body", "x" * 20_001)


# -- escaping ------------------------------------------------------------------------------


def test_html_is_autoescaped_and_text_is_not() -> None:
    evil = '<script>alert("x")</script> & co'
    assert render("<p>{{ v }}</p>", html=True, v=evil) == (
        "<p>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co</p>"
    )
    assert render("{{ v }}", html=False, v=evil) == evil
    # Template text is the template author's own HTML; `safe` is theirs to use.
    assert render("<b>{{ v|safe }}</b>", html=True, v="<i>ok</i>") == "<b><i>ok</i></b>"
    assert render("{{ v ~ '<br>' }}", html=True, v="<x>") == "&lt;x&gt;&lt;br&gt;"


# -- parts, locales, errors that say where ----------------------------------------------------

TEMPLATE = Template.from_json(
    {
        "default_locale": "en",
        "locales": {
            "en": {
                "push": {"title": "Hi {{ name }}", "body": "Welcome"},
                "email": {
                    "subject": "Welcome",
                    "text": "Hi {{ name }}",
                    "html": "<p>{{ name }}</p>",
                },
            },
            "de": {"push": {"title": "Hallo {{ name }}", "body": "Willkommen"}},
        },
    }
)


@pytest.mark.parametrize(
    ("locale", "title"),
    [
        ("de-AT", "Hallo Ada"),
        ("de_AT", "Hallo Ada"),
        ("de", "Hallo Ada"),
        ("en-GB", "Hi Ada"),
        ("fr", "Hi Ada"),
        ("pt-BR", "Hi Ada"),
    ],
)
def test_locale_falls_back_to_the_language_then_the_default(locale: str, title: str) -> None:
    rendered = TEMPLATE.render(Channel.PUSH, locale, {"name": "Ada"})
    assert rendered is not None
    assert rendered["title"] == title


def test_a_channel_missing_in_the_locale_comes_from_the_default() -> None:
    rendered = TEMPLATE.render(Channel.EMAIL, "de-AT", {"name": "<Ada>"})
    assert rendered == {"subject": "Welcome", "text": "Hi <Ada>", "html": "<p>&lt;Ada&gt;</p>"}
    assert TEMPLATE.render(Channel.SMS, "de-AT", {"name": "Ada"}) is None


@pytest.mark.parametrize(
    ("channel", "locale", "where"),
    [
        (Channel.PUSH, "en", "locales.en.push.title"),
        (Channel.PUSH, "de-AT", "locales.de.push.title"),
        (Channel.EMAIL, "de-AT", "locales.en.email.text"),
    ],
)
def test_a_missing_variable_names_the_part(channel: Channel, locale: str, where: str) -> None:
    with pytest.raises(TemplateError) as raised:
        TEMPLATE.render(channel, locale, {})
    assert raised.value.where == where
    assert "name" in raised.value.message
    assert str(raised.value).startswith(where)


def test_validate_names_the_part_that_does_not_compile() -> None:
    broken = Template.from_json(
        {
            "default_locale": "en",
            "locales": {
                "en": {"push": {"title": "fine"}},
                "de": {"email": {"html": "<p>\n{% for x in %}</p>"}},
            },
        }
    )
    with pytest.raises(TemplateError) as raised:
        broken.validate()
    assert raised.value.where == "locales.de.email.html"
    assert "line 2" in raised.value.message
    with pytest.raises(TemplateError) as missing_default:
        Template.from_json({"default_locale": "fr", "locales": {"en": {}}}).validate()
    assert missing_default.value.where == "default_locale"


# -- anything at all renders or is a TemplateError ------------------------------------------

JINJA_BITS = [
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "for ",
    " in ",
    "endfor",
    "if ",
    "endif",
    "else",
    "set ",
    "endset",
    "macro ",
    "endmacro",
    "call",
    "filter ",
    "endfilter",
    "block ",
    "endblock",
    "include ",
    "import ",
    "extends ",
    "raw",
    "endraw",
    "range(",
    ")",
    "(",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "~",
    "*",
    "**",
    "+",
    "-",
    "/",
    "//",
    "%",
    "|",
    ".",
    "'",
    '"',
    "x",
    "name",
    "items",
    "loop",
    "self",
    "caller",
    "10",
    "1000",
    "0",
    "-1",
    "1.5",
    "join",
    "format",
    "replace",
    "center",
    "indent",
    "batch",
    "sum",
    "attr",
    "safe",
    "__class__",
    "__globals__",
    "mro",
    "not ",
    " and ",
    " or ",
    " is ",
    "defined",
    "none",
    "true",
    "\n",
    " ",
    "recursive",
    "loop(",
    "upper",
    "list",
    "length",
]
sources = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(JINJA_BITS) | st.text(max_size=3), max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=sources, html=st.booleans())
def test_any_source_renders_or_is_a_template_error(source: str, html: bool) -> None:
    variables = {"name": "Ada <3", "items": [1, "two", {"x": 3}], "x": "y"}
    refused: TemplateError | None = None
    try:
        rendered = render(source, html, **variables)
    except TemplateError as error:
        refused = error
    if refused is not None:
        assert refused.where == "locales.en.push.body"
    else:
        assert isinstance(rendered, str)
        assert len(rendered) <= MAX_OUTPUT_CHARS


# -- through the API ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_api_refuses_a_runaway_template_with_a_422(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/users/ada", json={"locale": "de-AT"})).status_code == 201
    bomb = BOMBS["nested ranges"]
    saved = await api.put(
        "/v1/templates/bomb",
        json={"default_locale": "en", "locales": {"en": {"push": {"title": "t", "body": bomb}}}},
    )
    assert saved.status_code == 201  # it compiles; it is refused when it renders
    posted = await api.post("/v1/notifications", json={"user_id": "ada", "template": "bomb"})
    assert posted.status_code == 422
    error = posted.json()["error"]
    assert error["code"] == "template_error"
    assert error["details"][0]["field"] == "locales.en.push.body"
    assert "loop iterations" in error["message"]
