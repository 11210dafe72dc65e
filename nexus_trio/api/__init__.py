"""The HTTP API: OpenAI-compatible routes, health, and the errors they answer with."""

from nexus_trio.api.app import make_app

__all__ = ["make_app"]
