"""RTP media: packets, codecs, DTMF, statistics, the port pool, the relay, recording and mixing.

The pure parts (``rtp``, ``g711``, ``dtmf``, ``stats``, ``mixer``) take bytes
and arrays and return bytes, arrays or events; they know nothing of sockets or
time. ``ports`` hands out relay ports, ``relay`` moves packets between the two
legs of a call on the reactor, and ``recorder`` writes what it hears to WAV.
See docs/media.md.
"""
