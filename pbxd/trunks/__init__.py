"""SIP trunks to carriers (issue 5; docs/trunks.md).

- :mod:`pbxd.trunks.trunk`: ``Trunk`` (destinations and their health, hops
  to try, identity headers, credentials, limits) and ``TrunkRegistry``.
- :mod:`pbxd.trunks.inbound`: which trunk and DID a new request is for.
- :mod:`pbxd.trunks.registration`: the REGISTER client (RFC 3261 §10.2).
- :mod:`pbxd.trunks.health`: OPTIONS health checks.
- :mod:`pbxd.trunks.dns`: RFC 3263 server location with ``twisted.names``.
- :mod:`pbxd.trunks.limits`: concurrent calls and calls per second.
- :mod:`pbxd.trunks.numbers`: E.164 normalisation rules.
- :mod:`pbxd.trunks.codecs`: the offers a trunk's carrier gets, cut to its ``codecs``.

``pbxd.service.TrunkService`` builds them from ``Config.trunks``.
"""
