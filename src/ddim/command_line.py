"""Command-line overrides Hydra's grammar cannot read, made readable or explained in one line.

Hydra reads unquoted override values in ASCII only: `hydra.run.dir=outputs/ñandú` is a lexer error, while
`hydra.run.dir='outputs/ñandú'` (quotes that reach Hydra, i.e. inside the shell's quotes) works. A word (path, name)
holding non-ASCII letters means only one thing, so its quotes can be added for the user
(quote_unicode_overrides); an override that stays unreadable gets a message showing the quoted spelling.
"""

from __future__ import annotations

import re

# Characters that give a value structure in Hydra's grammar (lists, dicts, sweeps, calls, key: value): the parts
# between them are the words a user may have meant as plain strings.
_STRUCTURE = re.compile(r"[\[\](){},:=]+")
_OVERRIDE = re.compile(r"^(?P<key>[~+]{0,2}[\w.@/\-]+)=(?P<value>.*)$", re.DOTALL)


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return False
    return True


def _quote_words(value: str) -> str:
    """Each word of value holding non-ASCII characters in double quotes (its surrounding spaces outside)."""

    def quote(word: str) -> str:
        core = word.strip()
        if core.isascii():
            return word
        return word[: len(word) - len(word.lstrip())] + f'"{core}"' + word[len(word.rstrip()) :]

    words, seps = _STRUCTURE.split(value), _STRUCTURE.findall(value)
    return "".join(quote(w) + (seps[i] if i < len(seps) else "") for i, w in enumerate(words))


def quoted_override(override: str) -> str | None:
    """`key=value` with the non-ASCII words of value quoted, when Hydra cannot read it as typed but can read
    that (a value already holding quotes or escapes is left to its author); None otherwise."""
    found = _OVERRIDE.match(override)
    if found is None or override.isascii() or _parses(override):
        return None
    value = found.group("value")
    if value.isascii() or set("'\"\\") & set(value):
        return None
    quoted = f"{found.group('key')}={_quote_words(value)}"
    return quoted if _parses(quoted) else None


def quote_unicode_overrides(args: list[str]) -> list[str]:
    """The command line with each override Hydra cannot read because of non-ASCII words quoted (a folder
    `hydra.run.dir=outputs/ñandú` typed without quotes then works); everything else unchanged."""
    return [quoted_override(a) or a for a in args]


def explain_override_error(message: str) -> str | None:
    """One line for Hydra's error about an override it cannot read because of non-ASCII characters (the
    quoted spelling to type); None for any other message."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    parsed = re.match(r"^(?:LexerNoViableAltException|mismatched input .*?): (?P<override>.+)$", first)
    override = parsed.group("override").strip() if parsed else ""
    found = _OVERRIDE.match(override)
    if found is None or override.isascii():
        return None
    odd = "".join(sorted({c for c in found.group("value") if not c.isascii()}))
    quoted = quoted_override(override) or f'{found.group("key")}="{found.group("value")}"'
    return (
        f"{override}: Hydra reads unquoted values in ASCII only (here: {odd}). Put the words holding them in "
        f"double quotes, inside the shell's single quotes: '{quoted}'"
    )
