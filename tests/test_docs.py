"""The configuration the README and examples show loads as written, and README's key list is
the schema's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from nexus_trio.config import BackendType, Strategy, settings_from_mapping
from nexus_trio.config.reference import BEGIN_MARKER, END_MARKER, render_key_reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
README_TOML = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
ENV = {"OPENAI_API_KEY": "sk-test"}


def test_readme_has_config_examples() -> None:
    assert len(README_TOML) >= 2


@pytest.mark.parametrize("block", README_TOML, ids=lambda b: b.splitlines()[0])
def test_readme_toml_loads(block: str) -> None:
    settings_from_mapping(tomllib.loads(block), source="README.md", environ=ENV)


def test_readme_seed_config_means_what_it_says() -> None:
    seed = next(block for block in README_TOML if "[[backends]]" in block)  # the first fleet
    settings = settings_from_mapping(tomllib.loads(seed), environ={})
    assert [(b.name, b.type, b.priority) for b in settings.backends] == [
        ("local-ollama", BackendType.OLLAMA, 1),
        ("gpu-server", BackendType.VLLM, 2),
    ]
    assert settings.server.port == 8000
    assert settings.routing.strategy is Strategy.SMART


def test_readme_claude_alias_maps_every_claude_model_id() -> None:
    block = next(block for block in README_TOML if '"claude-*"' in block)
    routing = settings_from_mapping(tomllib.loads(block), environ={}).routing
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5-20251001", "claude-opus-5"):
        assert routing.resolve_alias(model) == "qwen3-coder:30b"


def test_example_config_loads() -> None:
    data = tomllib.loads((ROOT / "examples" / "nexus.toml").read_text())
    settings = settings_from_mapping(data, source="examples/nexus.toml", environ=ENV)
    assert settings.routing.resolve_alias("gpt-4o-mini") == "llama3:8b"
    assert len(settings.backends) == 4


def test_readme_key_list_matches_the_schema() -> None:
    start, end = README.index(BEGIN_MARKER), README.index(END_MARKER) + len(END_MARKER)
    assert README[start:end] + "\n" == render_key_reference(), (
        "README's key list differs from nexus_trio/config/schema.py: replace it (markers "
        "included) with the output of `python -m nexus_trio.config.reference`"
    )
