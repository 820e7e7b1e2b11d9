"""A work consumer that dies mid-handler, as a killed process would, on every transport variant.

On the brokers it is a real child process, SIGKILLed: no ack, no clean close; the broker sees
its socket die. `memory` has no process of its own to kill (nothing of it survives its process),
so there its consumers mid-handler are cancelled in place (`MemoryTransport.kill_consumers`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Protocol

from skipper.core.bus import BusOptions, Transport
from skipper.core.messages import Message
from skipper.transports.memory import MemoryTransport

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, sys
from skipper.core.bus import BusOptions
from tests.transports.factories import FACTORIES

async def main(variant, options, queue):
    async with FACTORIES[variant]() as make:
        bus = make(BusOptions.model_validate_json(options))

        async def hang(msg):
            print("started", msg.attempt, flush=True)
            await asyncio.Event().wait()

        bus.consume(queue, hang, prefetch=1)
        await bus.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:4]))
"""


class Doomed(Protocol):
    async def started(self) -> int:
        """Wait until the handler began a message; the attempt it began."""

    async def kill(self) -> None:
        """The consumer dies mid-handler."""


class _ChildProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def _line(self, timeout: float = 30.0) -> list[str]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, f"the consumer process exited with {await self.proc.wait()}"
        return line.decode().split()

    async def started(self) -> int:
        word, attempt = await self._line()
        assert word == "started"
        return int(attempt)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


class _InPlace:
    def __init__(self, transport: MemoryTransport, queue: str) -> None:
        self.transport = transport
        self.queue = queue
        self.attempts: asyncio.Queue[int] = asyncio.Queue()
        self.dead = False

    async def hang(self, msg: Message) -> None:
        self.attempts.put_nowait(msg.attempt)
        await asyncio.Event().wait()

    async def started(self) -> int:
        return await asyncio.wait_for(self.attempts.get(), 30)

    async def kill(self) -> None:
        if not self.dead:
            self.dead = True
            assert self.transport.kill_consumers(self.queue) == 1


async def doomed_consumer(variant: str, transport: Transport | None, options: BusOptions, queue: str) -> Doomed:
    """A consumer of `queue` with prefetch 1 whose handler hangs until `kill()`; started and ready."""
    if isinstance(transport, MemoryTransport):
        doomed = _InPlace(transport, queue)
        transport.consume(queue, doomed.hang, prefetch=1)
        await transport.start()
        return doomed
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, variant, options.model_dump_json(), queue,
        stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    child = _ChildProcess(proc)
    try:
        assert await child._line() == ["ready"]
    except BaseException:
        await child.kill()
        raise
    return child
