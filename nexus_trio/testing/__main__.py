"""``python -m nexus_trio.testing``: run the demo fleet and print where it listens."""

from __future__ import annotations

import signal

import trio

from ._fleet import demo_fleet, serve_fleet


async def _main() -> None:
    fleet = demo_fleet()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(serve_fleet, fleet)
            for backend, url in zip(fleet, urls, strict=True):
                models = ", ".join(m.id for m in backend.models)
                print(f"{backend.name:15} {backend.flavor.value:9} {url}  [{models}]")
            print("Ctrl-C to stop.", flush=True)
            await anext(signals)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(_main)
