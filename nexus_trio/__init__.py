"""nexus-trio: one OpenAI-compatible endpoint in front of every LLM server on a network."""

from __future__ import annotations

import sys

__version__ = "0.1.0"

__all__ = ["__version__"]

# httpx imports its own command line whenever click and rich are installed (typer brings
# both), and with it rich and pygments: 6 MB resident in every `nexus serve`. Nexus never
# calls it. An entry of None makes that import fail, and httpx stubs the command out as it
# does when they are missing.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
