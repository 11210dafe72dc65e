"""What each type of backend tells about itself, read off its own API."""

from nexus_trio.backends.checkup import Checkup, check_backend, check_with_deadline
from nexus_trio.backends.detect import Fingerprint, fingerprint
from nexus_trio.backends.listing import OllamaShowCache, list_models

__all__ = [
    "Checkup",
    "Fingerprint",
    "OllamaShowCache",
    "check_backend",
    "check_with_deadline",
    "fingerprint",
    "list_models",
]
