"""nexus-trio: one OpenAI-compatible endpoint in front of every LLM server on a network."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
