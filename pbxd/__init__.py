"""pbxd: a SIP/RTP PBX daemon on Twisted."""

__version__ = "0.1.0"
