"""Who this Nexus is on the wire: an id made once per running gateway.

Every response Nexus sends carries ``X-Nexus-Via: <id>``. Nexus serves the same
listings a backend does (an OpenAI ``/v1/models``, Ollama's ``/api/*``), so a probe
or an admin add pointed at a Nexus would otherwise take it for a backend: itself
(every request would loop until the attempts ran out) or another Nexus (a gateway
behind a gateway: two layers of failover, and a loop as soon as the other one finds
this one). Detection (`nexus_trio.backends.detect`) reads the header and refuses both.
"""

from __future__ import annotations

import secrets

__all__ = ["VIA_HEADER", "new_instance_id"]

VIA_HEADER = "x-nexus-via"


def new_instance_id() -> str:
    """A fresh random id (16 hex digits): unique enough to tell two Nexus apart."""
    return secrets.token_hex(8)
