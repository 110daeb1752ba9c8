"""SIP transports: UDP, TCP and TLS over IPv4 and IPv6 (RFC 3261 §18, RFC 3581, RFC 5626 §3.5.1).

``Target`` is imported at once; the Twisted side is loaded on first use, so
that the sans-IO layers (``pbxd.sip``) can name targets without importing
the network code, and without an import cycle (the layer itself uses
``pbxd.sip.routing``, which uses ``Target``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pbxd.transport.target import DEFAULT_PORTS, Target

if TYPE_CHECKING:
    from pbxd.transport.layer import (
        REFUSED,
        RESET,
        SEND_FAILED,
        TIMEOUT,
        TLS_FAILED,
        UNREACHABLE,
        UNRESOLVABLE,
        Listener,
        SipTransports,
        TransportCounters,
    )
    from pbxd.transport.tls import TlsClientPolicy, TlsConfigError, server_tls_options

_LAZY = {
    **dict.fromkeys(
        (
            "REFUSED", "RESET", "SEND_FAILED", "TIMEOUT", "TLS_FAILED", "UNREACHABLE", "UNRESOLVABLE",
            "Listener", "SipTransports", "TransportCounters",
        ),
        "pbxd.transport.layer",
    ),
    **dict.fromkeys(("TlsClientPolicy", "TlsConfigError", "server_tls_options"), "pbxd.transport.tls"),
}

__all__ = ["DEFAULT_PORTS", "Target", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
