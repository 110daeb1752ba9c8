"""Who lives here: the extensions table, held in memory.

The core asks :meth:`ExtensionDirectory.has_user` for every OPTIONS and
INVITE to a local user, and the ``static`` auth backend asks
:meth:`ExtensionDirectory.lookup` for every authenticated REGISTER, so both
answer from memory: the extensions are read from the store at start (and
again on :meth:`refresh`), and every change the store commits afterwards
(REST API, console, seeding) reaches the copy through the store's extension
listeners, before the Deferred of the change fires. Users of an HTTP backend
are not in the table; they exist here while they have a binding.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from pbxd.hooks.user_backend import UserLookup, extension_lookup
from pbxd.registrar.location import LocationService
from pbxd.store import Extension, Store

log = Logger(namespace="pbxd.registrar.directory")


class ExtensionDirectory:
    """Implements :class:`pbxd.core.UserDirectory` from the store and the location service,
    and the ``static`` user backend (:class:`pbxd.hooks.user_backend.UserBackend`)."""

    def __init__(self, store: Store, location: LocationService | None = None,
                 name: str = "static") -> None:
        self.store = store
        self.location = location
        self.name = name
        self._extensions: dict[str, Extension] = {}
        self._numbers: frozenset[str] = frozenset()
        # The last lookup answered per number, with its realm: a REGISTER
        # storm asks for the same few thousand users again and again. Dropped
        # when the extension changes.
        self._answers: dict[str, tuple[str, UserLookup]] = {}
        store.extension_listeners.append(self._changed)

    async def refresh(self) -> int:
        """Read the extensions again; returns how many are enabled."""
        extensions = await self.store.list_extensions()
        self._extensions = {e.number: e for e in extensions}
        self._answers.clear()
        self._renumber()
        return len(self._numbers)

    def _changed(self, number: str, extension: Extension | None) -> None:
        if extension is None:
            self._extensions.pop(number, None)
        else:
            self._extensions[number] = extension
        self._answers.pop(number, None)
        self._renumber()

    def _renumber(self) -> None:
        self._numbers = frozenset(n for n, e in self._extensions.items() if e.enabled)
        log.debug("directory: {count} enabled extensions", count=len(self._numbers))

    # -- pbxd.core.UserDirectory ------------------------------------------------

    def has_user(self, user: str) -> bool:
        if user in self._numbers:
            return True
        return self.location is not None and self.location.has_user(user)

    def __len__(self) -> int:
        return len(self._numbers)

    # -- the static user backend ------------------------------------------------

    def lookup(
        self, username: str, realm: str, request_uri: str | None = None
    ) -> defer.Deferred[UserLookup]:
        cached = self._answers.get(username)
        if cached is not None and cached[0] == realm:
            return defer.succeed(cached[1])
        answer = extension_lookup(self._extensions.get(username), realm, self.name)
        if username in self._extensions:
            # Only numbers that exist are kept: unknown names are an
            # attacker's to choose and would make the cache grow.
            self._answers[username] = (realm, answer)
        return defer.succeed(answer)


__all__ = ["ExtensionDirectory", "extension_lookup"]
