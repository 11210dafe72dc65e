"""The soak test's simulated fleet, with a chaos task: run by ``soak.py`` in its own process.

    python benchmarks/_soak_fleet.py --events PATH [--seed 1] [--flavors ollama,vllm,...]

Serves one model on several simulated backends (127.0.0.1, free ports), prints
one JSON line ``{"urls": [...], "names": [...], "flavors": [...]}`` on stdout
and then writes nothing more there (so an unread pipe never fills). Chaos
starts on SIGUSR1: every ``--fault-every`` seconds or so (uniform 0.5x-1.5x)
one backend that is not already faulty, picked at random, gets a random fault
for a random time in ``[--fault-min, --fault-max]`` seconds, and is then cleared.
At most ``--max-faulty`` backends are faulty at once, and never all of them:
at least one backend is healthy at every moment, which is what makes "lost
must be 0" a fair demand on the gateway.

Each fault applied and cleared is one JSON line in ``--events``; on SIGINT or
SIGTERM the fleet writes each backend's counters there and exits.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

__all__ = ["FAULT_KINDS", "main"]

FAULT_KINDS: Final = (
    "status_500",
    "status_503",
    "status_429",
    "slow_headers",
    "die_after",
    "stall_after",
    "malformed",
    "reset",
    "error_event",
    "refuse",
)
# A K past the shortest answer (24 tokens) would sometimes never fire.
MAX_CHUNK_K: Final = 20
REACCEPT_TRIES: Final = 20


class Events:
    """Appends one JSON object per line to the events file, flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._start = time.monotonic()

    def write(self, event: str, **fields: Any) -> None:
        record = {
            "t": round(time.monotonic() - self._start, 3),
            "wall": round(time.time(), 3),  # the clients' clock too: lost requests meet faults
            "event": event,
            **fields,
        }
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()


class Chaos:
    """Picks, applies and clears faults; keeps at least one backend healthy throughout."""

    def __init__(
        self,
        fleet: list[SimulatedBackend],
        rng: random.Random,
        events: Events,
        args: argparse.Namespace,
    ) -> None:
        self.fleet = fleet
        self.rng = rng
        self.events = events
        self.args = args
        self.faulty: set[str] = set()  # names; a backend stays here until truly cleared

    async def run(self) -> None:
        """Inject faults until cancelled."""
        limit = max(0, min(self.args.max_faulty, len(self.fleet) - 1))
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self.args.fault_every * self.rng.uniform(0.5, 1.5))
                calm = [b for b in self.fleet if b.name not in self.faulty]
                if len(self.faulty) >= limit or len(calm) <= 1:
                    continue
                backend = self.rng.choice(calm)
                kind = self.rng.choice(self.args.kinds)
                seconds = self.rng.uniform(self.args.fault_min, self.args.fault_max)
                self.faulty.add(backend.name)  # before the task starts: no double pick
                nursery.start_soon(self._fault, backend, kind, seconds)

    async def _fault(self, backend: SimulatedBackend, kind: str, seconds: float) -> None:
        faults = backend.faults
        detail: dict[str, Any] = {}
        if kind.startswith("status_"):
            faults.status = detail["status"] = int(kind.removeprefix("status_"))
        elif kind == "slow_headers":
            faults.delay_before_headers_seconds = detail["delay"] = self.args.delay
        elif kind == "die_after":
            faults.die_after_chunks = detail["k"] = self.rng.randint(0, MAX_CHUNK_K)
        elif kind == "stall_after":
            faults.stall_after_chunks = detail["k"] = self.rng.randint(0, MAX_CHUNK_K)
        elif kind == "error_event":
            faults.error_event_after_chunks = detail["k"] = self.rng.randint(0, MAX_CHUNK_K)
        elif kind == "malformed":
            faults.malformed = True
        elif kind == "reset":
            faults.reset_before_headers = True
        elif kind == "refuse":
            await backend.refuse_connections()
        self.events.write(
            "fault", backend=backend.name, kind=kind, seconds=round(seconds, 3), **detail
        )
        await trio.sleep(seconds)
        faults.clear()
        if kind == "refuse" and not await self._accept_again(backend):
            return  # stays in `faulty`: down for good, and never counted as the healthy one
        self.faulty.discard(backend.name)
        self.events.write("clear", backend=backend.name, kind=kind)

    async def _accept_again(self, backend: SimulatedBackend) -> bool:
        # The port is free again for anyone; an outgoing socket may hold it for a moment.
        for _ in range(REACCEPT_TRIES):
            try:
                await backend.accept_connections()
            except OSError as exc:
                self.events.write("reaccept_failed", backend=backend.name, error=str(exc))
                await trio.sleep(0.5)
            else:
                return True
        self.events.write("lost_backend", backend=backend.name)
        return False


def _stats(fleet: list[SimulatedBackend]) -> dict[str, dict[str, int]]:
    return {
        b.name: {
            "requests": b.stats.requests,
            "chat_requests": b.stats.chat_requests,
            "completed": b.stats.completed,
            "disconnects": b.stats.disconnects,
        }
        for b in fleet
    }


async def _serve(args: argparse.Namespace, events: Events) -> None:
    rng = random.Random(args.seed)
    flavors = [Flavor(f) for f in args.flavors]
    fleet = [
        SimulatedBackend(
            flavor,
            [SimModel(args.model)],
            tokens_per_second=args.tokens_per_second,
            name=f"soak-{i}-{flavor.value}",
        )
        for i, flavor in enumerate(flavors)
    ]
    for backend in fleet:
        # Warm, as a fleet that has been serving is: Nexus's smart routing would
        # otherwise send nothing to an Ollama whose /api/ps does not list the model.
        backend.mark_loaded(args.model)
    chaos = Chaos(fleet, rng, events, args)
    signals = (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM)
    try:
        with trio.open_signal_receiver(*signals) as received:
            async with trio.open_nursery() as nursery:
                urls = [await nursery.start(b.serve, "127.0.0.1", 0) for b in fleet]
                print(
                    json.dumps(
                        {
                            "urls": urls,
                            "names": [b.name for b in fleet],
                            "flavors": [f.value for f in flavors],
                        }
                    ),
                    flush=True,
                )
                started = False  # a second SIGUSR1 does nothing
                async for signum in received:
                    if signum != signal.SIGUSR1:
                        break
                    if not started:
                        started = True
                        events.write("chaos_start")
                        nursery.start_soon(_guarded, chaos.run, events)
                nursery.cancel_scope.cancel()
    finally:
        events.write("stats", backends=_stats(fleet), faulty=sorted(chaos.faulty))


async def _guarded(run: Callable[[], Awaitable[None]], events: Events) -> None:
    try:
        await run()
    except Exception as exc:  # a bug here must show up in the report, not end the fleet
        events.write("chaos_crashed", error=repr(exc))
        raise


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="soak:1b")
    parser.add_argument(
        "--flavors",
        type=lambda s: s.split(","),
        default=["ollama", "vllm", "llamacpp", "vllm"],
    )
    parser.add_argument("--tokens-per-second", type=float, default=200.0)
    parser.add_argument("--fault-every", type=float, default=3.0)
    parser.add_argument("--fault-min", type=float, default=1.0)
    parser.add_argument("--fault-max", type=float, default=6.0)
    parser.add_argument("--max-faulty", type=int, default=2)
    parser.add_argument("--delay", type=float, default=6.0, help="slow_headers delay, seconds")
    parser.add_argument(
        "--kinds", type=lambda s: s.split(","), default=list(FAULT_KINDS), help="comma-separated"
    )
    args = parser.parse_args(argv)
    unknown = set(args.kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if len(args.flavors) < 2:
        parser.error("the fleet needs at least two backends (one must stay healthy)")
    if not 0 < args.fault_min <= args.fault_max:
        parser.error("need 0 < --fault-min <= --fault-max")
    return args


def main(argv: list[str] | None = None) -> None:
    """Serve the fleet until SIGINT or SIGTERM (chaos from SIGUSR1 on)."""
    args = _parse(argv)
    with args.events.open("a", encoding="utf-8") as out:
        trio.run(_serve, args, Events(out))


if __name__ == "__main__":
    main()
