"""Sans-IO Engine.IO v4 and Socket.IO v5: bytes and strings in, typed packets out.

Nothing in this package does I/O, reads a clock or imports Trio. What the specifications
call invalid is raised as :class:`~liveloop.wire.errors.ProtocolError`; no other
exception escapes a decoder.
"""
