"""Socket abuse for SECONDS with CLIENTS concurrent connections (run as a script).

abuser.py SOCKET CLIENTS SECONDS: each connection loops over random abuse: garbage lines,
10 MB lines, idle connections, requests never read, disconnects mid-request. Prints the
number of connections made.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

BIG = b"x" * (10 << 20)


async def one(path: str, rng: random.Random, deadline: float) -> int:
    """One abusive connection; 1 when it connected."""
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        await asyncio.sleep(0.05)
        return 0
    kind = rng.randrange(5)
    try:
        if kind == 0:  # garbage, with and without newlines
            for _ in range(rng.randrange(1, 50)):
                writer.write(rng.randbytes(rng.randrange(1, 500)) + b"\n" * rng.randrange(2))
            await writer.drain()
            await asyncio.wait_for(reader.read(1 << 16), 2)
        elif kind == 1:  # a 10 MB line
            writer.write(BIG + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        elif kind == 2:  # idle until the deadline or the daemon drops us
            await asyncio.wait_for(reader.read(1), max(0.0, deadline - time.monotonic()))
        elif kind == 3:  # requests, replies never read
            for _ in range(2000):
                writer.write(b'{"v":1,"cmd":"status"}\n')
                await asyncio.wait_for(writer.drain(), 2)
        else:  # half a request, then gone
            writer.write(b'{"v":1,"cmd":"rep')
            await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass
    writer.close()
    return 1


async def worker(path: str, seed: int, deadline: float) -> int:
    rng = random.Random(seed)
    made = 0
    while time.monotonic() < deadline:
        made += await one(path, rng, deadline)
        await asyncio.sleep(0.01)  # churn, not a busy loop of this process's own
    return made


async def main(path: str, clients: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    made = await asyncio.gather(*(worker(path, n, deadline) for n in range(clients)))
    print(sum(made), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
