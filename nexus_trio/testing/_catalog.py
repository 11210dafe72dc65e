"""What a simulated model file looks like: family, size, digest, derived from its id.

Everything here is a pure function of the model id, so every listing endpoint
of every flavour tells the same story about the same model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["CREATED", "MODIFIED_AT", "QUANTIZATION", "Card", "card"]

# One fixed instant, so listings are stable: 2025-09-30T12:00:00Z.
CREATED: Final = 1759233600
MODIFIED_AT: Final = "2025-09-30T12:00:00Z"
QUANTIZATION: Final = "Q4_K_M"
CENTIBITS_PER_WEIGHT: Final = 485  # 4.85 bits, about what Q4_K_M comes to
DEFAULT_PARAMETERS: Final = 7_000_000_000

_SIZE_TAG = re.compile(r"(\d+(?:\.\d+)?)([bm])\b", re.IGNORECASE)
_FAMILIES: Final = (
    ("qwen", "qwen2"),
    ("gemma", "gemma3"),
    ("phi", "phi3"),
    ("mistral", "llama"),
    ("deepseek", "qwen2"),
)


@dataclass(frozen=True, slots=True)
class Card:
    """The facts every listing reports about one model."""

    family: str
    parameters: int
    parameter_size: str  # as Ollama prints it: "8.0B", "135M"
    size: int  # bytes of the model file
    digest: str  # sha256 hex

    @property
    def file_name(self) -> str:
        return f"model-{self.parameter_size.lower()}-{QUANTIZATION.lower()}.gguf"


def card(model_id: str) -> Card:
    """The card of ``model_id`` (e.g. ``"llama3:8b"`` → a llama of 8.0B parameters)."""
    base = model_id.split("/")[-1].lower()
    family = next((fam for prefix, fam in _FAMILIES if base.startswith(prefix)), "llama")
    match = _SIZE_TAG.search(base)
    if match:
        scale = 1_000_000_000 if match.group(2).lower() == "b" else 1_000_000
        parameters = int(float(match.group(1)) * scale)
    else:
        parameters = DEFAULT_PARAMETERS
    if parameters >= 1_000_000_000:
        label = f"{parameters / 1_000_000_000:.1f}B"
    else:
        label = f"{parameters / 1_000_000:.0f}M"
    size = parameters * CENTIBITS_PER_WEIGHT // 800
    digest = hashlib.sha256(f"simulated:{model_id}".encode()).hexdigest()
    return Card(family, parameters, label, size, digest)
