"""Numbers from a carrier brought to E.164 by a trunk's ``normalize`` rules.

Carriers write the same number many ways (``030 1234-56``, ``004930123456``,
``+49 30 123456``); DIDs and routes are written once, in E.164. A number is
first stripped of the visual separators RFC 3966 §5.1.1 allows in a tel: URI
(``-``, ``.``, ``(``, ``)``, and the spaces people type), then the first rule
whose pattern matches the whole number rewrites it (a
:class:`pbxd.call.routing.Rewrite`, the same rewrite static routes use).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from pbxd.call.routing import Rewrite

_VISUAL_SEPARATORS = re.compile(r"[\s\-.()]")


def strip_separators(number: str) -> str:
    """``+49 (30) 123-456`` -> ``+4930123456``."""
    return _VISUAL_SEPARATORS.sub("", number)


# A telephone number once separators are gone (RFC 3966 §5.1: digits, a leading +, and * # of local numbers).
_NUMBER = re.compile(r"\+?[0-9*#]+")


def is_number(text: str) -> bool:
    """Whether ``text`` is a telephone number (separators allowed), not a name like ``alice.smith``."""
    return _NUMBER.fullmatch(strip_separators(text)) is not None


@attrs.frozen
class NumberRules:
    """A trunk's rewrite rules; the first that matches applies, none: the number as it is."""

    rules: tuple[Rewrite, ...] = ()

    @classmethod
    def from_config(cls, entries: Iterable[Any]) -> NumberRules:
        """From ``trunks[].normalize`` entries (pattern + replacement, checked at load)."""
        return cls(tuple(Rewrite(re.compile(entry.pattern), entry.replacement) for entry in entries))

    def normalize(self, number: str) -> str:
        number = strip_separators(number)
        for rule in self.rules:
            if rule.pattern.fullmatch(number):
                return rule.apply(number)
        return number


__all__ = ["NumberRules", "is_number", "strip_separators"]
