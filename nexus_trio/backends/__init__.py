"""What each type of backend tells about itself, read off its own API."""

from nexus_trio.backends.listing import OllamaShowCache, list_models

__all__ = ["OllamaShowCache", "list_models"]
