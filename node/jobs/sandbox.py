"""The sandbox pool: work functions run in V8 in separate processes (`sandbox_child.py`), never in the
node's, so untrusted JavaScript cannot reach the node and a runaway slice cannot stall its event loop.

`SandboxPool` owns those processes: `size` of them, started on first use, each running one batch at a
time; a process that dies (a crash, a kill, a callback no timeout stops) is replaced, and a batch it was
running gets ESANDBOX for the slices it had not finished, never a hang: every answer is awaited with a
wall-clock guard, past which the process is killed. `cancel(job)` kills the processes running that job.

The protocol, over each child's stdin and stdout, is length-prefixed (4 bytes, big-endian) msgpack frames:
  to the child   {"op": "check", "function"} | {"op": "run", "job", "function", "args", "data", "timeout_ms"}
                 (`args` and `data` as JSON bytes)
  from it        {"ok": true} | {"compile": message, "bye"?: bool} | {"o": [[value, error, ms], ...], "bye": bool}
A run's outcomes come in order, in as many frames as the child likes; `bye` says the child ends after this
frame (the slices of a run it did not report are sent again to a new child if it made progress).
"""

import asyncio
import os
import struct
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import msgpack
import orjson

from dhtmesh.node.errors import ServiceError

CHILD_MODULE = "dhtmesh.node.jobs.sandbox_child"
HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
# Past its own time limits, how long a child may take to answer (starting up, renewing a context, a slow
# machine) before it is taken for hung and killed.
GRACE = 10.0
CHECK_TIMEOUT = 1.0  # the child's own limit on evaluating a function text
CANCELLED_KEPT = 1024


@dataclass(frozen=True, slots=True)
class SliceOutcome:
    value: bytes | None  # the result as canonical JSON (sorted keys), if the slice succeeded
    error: str | None  # else "<CODE>: <message>"
    cpu_ms: float  # how long the slice ran in V8 (wall time in the sandbox)


class SandboxError(ServiceError):
    """The sandbox could not run what it was given."""


class CompileError(SandboxError):
    """The work function does not evaluate to a function; str() is V8's own message."""


class Cancelled(SandboxError):
    """The run was stopped by `SandboxPool.cancel` (or the pool was closed)."""


class _Lost(Exception):
    """The child died, hung or broke the protocol."""


class _Child:
    """One sandbox process and its end of the protocol."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, memory_mib: int) -> "_Child":
        # The default close_fds keeps the node's sockets out of the child; stderr goes nowhere (a traceback
        # there is of no use to the node and must not fill a pipe).
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            CHILD_MODULE,
            str(memory_mib),
            str(os.getpid()),  # the child dies with this process: it checks that it is still its parent
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(process)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: dict) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(HEADER.pack(len(body)) + body)
            await stdin.drain()
        except ConnectionError as error:
            raise _Lost from error

    async def receive(self, guard: float) -> dict:
        """The next frame; _Lost if none comes within `guard` seconds."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(guard):
                (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
                if size > MAX_FRAME:
                    raise _Lost
                message = msgpack.unpackb(await stdout.readexactly(size), raw=False)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError) as error:
            raise _Lost from error
        if not isinstance(message, dict):
            raise _Lost
        return message

    async def stop(self) -> None:
        """Kills the process (by its PID) and reaps it."""
        if self.alive:
            self.process.kill()
        await self.process.wait()


@dataclass(eq=False)
class _Run:
    """A run in the pool: waiting for a child, or running on one."""

    job: bytes
    child: _Child | None = None
    waiting: asyncio.Future | None = None
    cancelled: bool = False
    outcomes: list[SliceOutcome] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled = True
        if self.child is not None and self.child.alive:
            self.child.process.kill()
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(Cancelled("the job was cancelled"))


class SandboxPool:
    """`size` sandbox processes for work functions (see the module's docstring)."""

    def __init__(self, size: int = 1, memory_mib: int = 256, max_slice_ms: int = 30_000) -> None:
        self._size = size
        self._memory_mib = memory_mib
        self._max_slice_ms = max_slice_ms
        self._idle: list[_Child | None] = [None] * size  # None: a slot whose process starts when needed
        self._waiters: deque[asyncio.Future] = deque()
        self._runs: set[_Run] = set()
        self._children: set[_Child] = set()
        self._cancelled: OrderedDict[bytes, None] = OrderedDict()  # jobs cancelled lately
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def busy(self) -> int:
        """How many processes run a batch or a check now."""
        return self._size - len(self._idle)

    async def warm(self) -> None:
        """Start every idle slot's process now, so that a worker's first batches wait for none (a slot
        whose process cannot start starts one when next needed)."""
        empty = self._idle.count(None)
        self._idle = [slot for slot in self._idle if slot is not None]
        for _ in range(empty):
            try:
                child = await self._spawn(None)  # gives its slot back, empty, if it fails
            except SandboxError:
                continue
            self._release(child)

    async def check(self, function: str) -> None:
        """Compiles `function` in a sandbox without calling it; raises CompileError with V8's message."""
        run = _Run(job=b"")
        try:
            child = await self._acquire(run)
            answer = await self._check(child, function)
        finally:
            self._runs.discard(run)
        if "compile" in answer:
            raise CompileError(answer["compile"])

    async def _check(self, child: _Child, function: str) -> dict:
        try:
            await child.send({"op": "check", "function": function})
            answer = await child.receive(CHECK_TIMEOUT + GRACE)
        except _Lost:
            await self._retire(child)
            raise SandboxError("the sandbox process was lost") from None
        except BaseException:
            await self._retire(child)
            raise
        if answer.get("bye"):
            await self._retire(child)
        else:
            self._release(child)
        return answer

    async def run(self, job: bytes, function: str, args: list, data: list, timeout_ms: int) -> list[SliceOutcome]:
        """One outcome per datum, in order. Raises CompileError, Cancelled, or SandboxError if the pool is
        closed or `args` or `data` are not JSON."""
        timeout_ms = max(1, min(timeout_ms, self._max_slice_ms))
        try:
            encoded_args, encoded_data = orjson.dumps(args), orjson.dumps(data)
        except TypeError as error:
            raise SandboxError(f"args or data are not JSON: {error}") from None
        if job in self._cancelled:
            raise Cancelled("the job was cancelled")
        run = _Run(job=job)
        try:
            while len(run.outcomes) < len(data):
                if run.outcomes:  # a child ended after some of the batch: the rest goes to a new one
                    encoded_data = orjson.dumps(data[len(run.outcomes) :])
                request = {"op": "run", "job": job, "function": function, "args": encoded_args}
                request |= {"data": encoded_data, "timeout_ms": timeout_ms}
                if not await self._batch(run, request, len(data), timeout_ms):
                    lost = SliceOutcome(None, "ESANDBOX: the sandbox process was lost", 0.0)
                    run.outcomes += [lost] * (len(data) - len(run.outcomes))
        finally:
            self._runs.discard(run)
        return run.outcomes

    async def _batch(self, run: _Run, request: dict, count: int, timeout_ms: int) -> bool:
        """Sends the rest of a run to a child and takes its outcomes; False when the child was lost without
        progress (the rest then gets ESANDBOX)."""
        child = await self._acquire(run)
        before = len(run.outcomes)
        # Between two frames a child may load the data, run a segment, then its slowest slice again alone.
        guard = 3 * timeout_ms / 1000 + GRACE
        try:
            await child.send(request)
            while len(run.outcomes) < count:
                answer = await child.receive(guard)
                if "compile" in answer:
                    self._release(child)
                    raise CompileError(answer["compile"])
                run.outcomes += [SliceOutcome(value, error, float(ms)) for value, error, ms in answer["o"]]
                if answer["bye"]:
                    raise _Lost
        except _Lost:
            await self._retire(child)
            if run.cancelled:
                raise Cancelled("the job was cancelled") from None
            return len(run.outcomes) > before
        except CompileError:
            raise
        except BaseException:
            await self._retire(child)
            raise
        finally:
            run.child = None
        self._release(child)
        return True

    async def _acquire(self, run: _Run) -> _Child:
        """An idle child for `run` (started if its slot has none), once one is free."""
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        self._runs.add(run)
        if self._idle:
            slot = self._idle.pop()
        else:
            run.waiting = asyncio.get_running_loop().create_future()
            self._waiters.append(run.waiting)
            try:
                slot = await run.waiting
            except asyncio.CancelledError:
                if run.waiting.done() and not run.waiting.cancelled() and run.waiting.exception() is None:
                    self._release(run.waiting.result())  # handed a child just as our caller gave up
                raise
            finally:
                run.waiting = None
        if slot is None or not slot.alive:
            slot = await self._spawn(slot)
        run.child = slot
        if run.cancelled:  # while its process started
            await self._retire(slot)
            raise Cancelled("the job was cancelled")
        return slot

    async def _spawn(self, dead: _Child | None) -> _Child:
        if dead is not None:
            await self._stop(dead)
        try:
            child = await _Child.start(self._memory_mib)
        except OSError as error:
            self._release(None)
            raise SandboxError(f"cannot start a sandbox process: {error}") from error
        except BaseException:
            self._release(None)
            raise
        self._children.add(child)
        return child

    def _release(self, child: _Child | None) -> None:
        """Gives a child (or its empty slot) to the first run waiting, else back to the idle ones."""
        if self._closed and child is not None:
            child.process.kill()
            child = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    async def _retire(self, child: _Child) -> None:
        """Kills a child that can no longer be trusted with a batch; its slot starts a new one when needed."""
        await self._stop(child)
        self._release(None)

    async def _stop(self, child: _Child) -> None:
        await child.stop()
        self._children.discard(child)

    def cancel(self, job: bytes) -> None:
        """Stops every run of `job` now: their processes are killed, and their `run()` raises Cancelled;
        a run of it that starts later raises Cancelled at once (the job is remembered, among the last
        `CANCELLED_KEPT`)."""
        self._cancelled[job] = None
        if len(self._cancelled) > CANCELLED_KEPT:
            self._cancelled.popitem(last=False)
        for run in list(self._runs):
            if run.job == job:
                run.cancel()

    async def close(self) -> None:
        """Stops every child process (killed by PID) and waits for them; runs in progress raise Cancelled."""
        self._closed = True
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*(self._stop(child) for child in list(self._children)))
        self._idle = [None] * len(self._idle)
