"""Several simulated backends at once: the demo fleet and a helper to serve any fleet."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ._backend import SimulatedBackend
from ._types import Flavor, SimModel

__all__ = ["demo_fleet", "serve_fleet"]

DEMO_TOKENS_PER_SECOND = 50.0


async def serve_fleet(
    backends: Sequence[SimulatedBackend],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every backend on 127.0.0.1 (each on a free port) until cancelled.

    Reports the URLs, in the order of ``backends``, once all of them listen.

    Example::

        urls = await nursery.start(serve_fleet, demo_fleet())
    """
    async with trio.open_nursery() as nursery:
        urls = [await nursery.start(backend.serve) for backend in backends]
        task_status.started(urls)


def demo_fleet() -> list[SimulatedBackend]:
    """The fleet ``nexus serve --demo`` runs: an Ollama, a vLLM and a llama.cpp server.

    Each streams at 50 tokens per second, so streaming is visible.
    """
    rate = DEMO_TOKENS_PER_SECOND
    return [
        SimulatedBackend(
            Flavor.OLLAMA,
            [
                SimModel("llama3:8b", context_length=8192, tools=True),
                SimModel("llava:7b", context_length=4096, vision=True),
            ],
            tokens_per_second=rate,
            name="demo-ollama",
        ),
        SimulatedBackend(
            Flavor.VLLM,
            [
                SimModel("llama3:8b", context_length=8192, tools=True),
                SimModel("qwen2.5-coder:7b", context_length=32768, tools=True),
            ],
            tokens_per_second=rate,
            name="demo-vllm",
        ),
        SimulatedBackend(
            Flavor.LLAMACPP,
            [SimModel("smollm2:135m", context_length=4096)],
            tokens_per_second=rate,
            name="demo-llamacpp",
        ),
    ]
