"""Simulated LLM servers that speak the real wire protocols, with fault injection.

They stand in for Ollama, vLLM, llama.cpp, LM Studio, exo, LocalAI and generic
OpenAI-compatible servers in the tests, in ``nexus serve --demo`` and in the
benchmarks. Each is a small HTTP/1.1 server on trio sockets (h11), so faults are
exact: a stream cut after K chunks, a stall, a broken event, a refused connection.

Example::

    sim = SimulatedBackend(Flavor.OLLAMA, [SimModel("llama3:8b", tools=True)])
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        sim.faults.die_after_chunks = 3        # the next stream is cut after 3 tokens
        ...
        nursery.cancel_scope.cancel()

Answers are deterministic (:func:`expected_answer`), so a continuation after a
failover can be checked word for word.
"""

from ._backend import SimulatedBackend
from ._embeddings import embedding_of
from ._fleet import demo_fleet, serve_fleet
from ._text import continuation, expected_answer
from ._types import Faults, Flavor, SimModel, SimStats

__all__ = [
    "Faults",
    "Flavor",
    "SimModel",
    "SimStats",
    "SimulatedBackend",
    "continuation",
    "demo_fleet",
    "embedding_of",
    "expected_answer",
    "serve_fleet",
]
