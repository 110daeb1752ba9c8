"""Calls: the B2BUA (a Call is two or more Legs, each a SIP dialog of its own) and
the routing decision that says where an INVITE goes (:mod:`pbxd.call.routing`)."""
