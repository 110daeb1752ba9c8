"""Identifiers pbxd mints: tags and Call-IDs (RFC 3261 §19.3).

They must be globally unique and unguessable (§19.3 asks for at least 32 bits
of randomness); ``secrets`` gives that without a shared counter.
"""

from __future__ import annotations

import secrets


def new_tag() -> str:
    """A From/To tag."""
    return secrets.token_hex(8)


def new_call_id(host: str) -> str:
    """A Call-ID of the form random@host."""
    return f"{secrets.token_hex(12)}@{host}"
