"""Who lives here: the SIP core's user directory, from the extensions table.

The core asks :meth:`ExtensionDirectory.has_user` for every OPTIONS and
INVITE to a local user, so the answer comes from memory: the enabled
extension numbers, read from the store at start and again on
:meth:`refresh` (the REST API calls it after changing an extension). Users
of an HTTP backend are not in the table; they exist here while they have a
binding.
"""

from __future__ import annotations

from twisted.logger import Logger

from pbxd.registrar.location import LocationService
from pbxd.store import Store

log = Logger(namespace="pbxd.registrar.directory")


class ExtensionDirectory:
    """Implements :class:`pbxd.core.UserDirectory` from the store and the location service."""

    def __init__(self, store: Store, location: LocationService | None = None) -> None:
        self.store = store
        self.location = location
        self._numbers: frozenset[str] = frozenset()

    async def refresh(self) -> int:
        """Read the enabled extension numbers again; returns how many there are."""
        extensions = await self.store.list_extensions()
        self._numbers = frozenset(e.number for e in extensions if e.enabled)
        log.debug("directory: {count} enabled extensions", count=len(self._numbers))
        return len(self._numbers)

    def has_user(self, user: str) -> bool:
        if user in self._numbers:
            return True
        return self.location is not None and self.location.has_user(user)

    def __len__(self) -> int:
        return len(self._numbers)


__all__ = ["ExtensionDirectory"]
