"""The cutting TCP proxy the recovery tests use: the bench's own (one implementation)."""

from liveloop.bench.proxy import CuttingProxy

__all__ = ["CuttingProxy"]
