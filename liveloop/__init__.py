"""Live Loop: random one-to-one video chat signaling, Socket.IO on Trio."""

__version__ = "0.1.0"
