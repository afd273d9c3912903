"""The sandbox pool (node/jobs/sandbox.py): work functions run in real sandbox processes, and what a batch
answers for results, throws, non-JSON, big results, runaway time and memory, a killed process, a cancel."""

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from dhtmesh.node.jobs.sandbox import Cancelled, CompileError, SandboxPool, SliceOutcome
from dhtmesh.testing import eventually

pytestmark = pytest.mark.process

SPIN = "x => { const t = Date.now(); while (Date.now() - t < 50); return x; }"  # 50 ms of work a slice


def sandboxes() -> dict[int, int]:
    """Every sandbox process on the machine, by PID: its parent's PID (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sandbox_child" in command:
            found[int(entry.name)] = int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
            )
    return found


def sandbox_pids(parent: int | None = None) -> set[int]:
    """The PIDs of the sandbox children of `parent` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    return {pid for pid, of in sandboxes().items() if of == parent}


def open_files(pid: int) -> set[str]:
    """What the process's file descriptors point to (`socket:[INODE]` for a socket)."""
    return {os.readlink(link) for link in Path(f"/proc/{pid}/fd").iterdir()}


def values(outcomes: list[SliceOutcome]) -> list:
    return [orjson.loads(outcome.value) if outcome.value is not None else outcome.error for outcome in outcomes]


@pytest.fixture
async def pool() -> AsyncIterator[SandboxPool]:
    sandbox = SandboxPool(size=1, memory_mib=64, max_slice_ms=5_000)
    yield sandbox
    await sandbox.close()


async def test_a_batch_gives_each_datum_its_result_in_order(pool: SandboxPool) -> None:
    outcomes = await pool.run(b"double", "x => x * 2", [], list(range(1000)), 1000)
    assert values(outcomes) == [x * 2 for x in range(1000)]
    assert all(outcome.error is None and outcome.cpu_ms >= 0 for outcome in outcomes)
    assert values(await pool.run(b"affine", "(x, a, b) => x * a + b", [10, 3], [0, 1, 2], 1000)) == [3, 13, 23]


async def test_compiled_functions_are_cached_by_job_and_source(pool: SandboxPool) -> None:
    for n in range(20):  # more jobs than the cache holds
        assert values(await pool.run(bytes([n]), f"x => x + {n}", [], [1], 1000)) == [1 + n]
    assert values(await pool.run(bytes([0]), "x => x - 1", [], [1], 1000)) == [0]  # same job, new text


async def test_results_are_canonical_json(pool: SandboxPool) -> None:
    [outcome] = await pool.run(b"obj", "x => ({b: x, a: [1, {d: 2, c: 3}]})", [], [7], 1000)
    assert outcome.value == b'{"a":[1,{"c":3,"d":2}],"b":7}'


async def test_an_async_function_is_awaited(pool: SandboxPool) -> None:
    function = "async (x) => { await new Promise((done) => setTimeout(done, 5)); return x + 1; }"
    assert values(await pool.run(b"async", function, [], [1, 2, 3], 1000)) == [2, 3, 4]


async def test_an_infinite_loop_is_too_slow_and_the_other_slices_stand(pool: SandboxPool) -> None:
    function = "x => { if (x === 1) while (true); return x; }"
    outcomes = await pool.run(b"loop", function, [], [0, 1, 2], 300)
    assert values(outcomes)[0] == 0 and values(outcomes)[2] == 2
    assert outcomes[1].error.startswith("ESLICETOOSLOW")


async def test_a_slice_has_its_whole_limit_even_when_its_batch_runs_over(pool: SandboxPool) -> None:
    # 300 ms a slice, 500 ms the limit: the batch's call times out in the second slice, which runs again alone.
    function = "x => { const t = Date.now(); while (Date.now() - t < 300); return x; }"
    assert values(await pool.run(b"slowish", function, [], [0, 1, 2], 500)) == [0, 1, 2]


async def test_timers_of_a_batch_end_with_it(pool: SandboxPool) -> None:
    leave = "x => { setTimeout(() => { while (true); }, 100); return x; }"
    assert values(await pool.run(b"leave", leave, [], [0], 1000)) == [0]
    await asyncio.sleep(0.3)  # past the timer's delay
    assert values(await pool.run(b"later", "x => x + 1", [], [1, 2], 1000)) == [2, 3]


async def test_a_promise_that_never_settles_or_a_callback_that_never_ends_is_too_slow(pool: SandboxPool) -> None:
    never = "async (x) => { if (x === 1) await new Promise(() => {}); return x; }"
    assert [str(v)[:13] for v in values(await pool.run(b"never", never, [], [0, 1, 2], 300))] == [
        "0", "ESLICETOOSLOW", "2"
    ]  # fmt: skip
    # After an await no V8 timeout applies: the child ends, and the rest of the batch goes to a new one.
    runaway = "async (x) => { await null; if (x === 1) while (true); return x; }"
    outcomes = await pool.run(b"runaway", runaway, [], [0, 1, 2], 300)
    assert values(outcomes)[0] == 0 and values(outcomes)[2] == 2
    assert outcomes[1].error.startswith("ESLICETOOSLOW")


async def test_a_memory_bomb_is_enomem_and_the_pool_goes_on(pool: SandboxPool) -> None:
    bomb = "x => { if (x === 1) { const a = []; while (true) a.push(new Array(1e6).fill(1)); } return x; }"
    outcomes = await pool.run(b"bomb", bomb, [], [0, 1, 2], 5000)
    assert values(outcomes)[0] == 0 and values(outcomes)[2] == 2
    assert outcomes[1].error.startswith("ENOMEM")
    assert values(await pool.run(b"after", "x => x + 1", [], [1], 1000)) == [2]


async def test_buffers_outside_the_heap_are_bounded_too(pool: SandboxPool) -> None:
    buffers = "x => { const a = []; while (true) a.push(new Uint8Array(1e8)); }"
    wasm = "x => { const m = new WebAssembly.Memory({initial: 1, maximum: 65536}); while (true) m.grow(1000); }"
    outcomes = await pool.run(b"buffers", buffers, [], [0], 5000) + await pool.run(b"wasm", wasm, [], [0], 5000)
    assert [outcome.error.split(":")[0] for outcome in outcomes] == ["ENOMEM", "EUNCAUGHT"]
    assert "grow" in outcomes[1].error
    assert values(await pool.run(b"after", "x => x + 1", [], [1], 1000)) == [2]


async def test_a_throw_is_uncaught_with_its_message(pool: SandboxPool) -> None:
    [outcome] = await pool.run(b"throw", "x => { throw new RangeError('no ' + x); }", [], [5], 1000)
    assert outcome.value is None and outcome.error == "EUNCAUGHT: RangeError: no 5"


async def test_results_json_cannot_carry_are_enotjson(pool: SandboxPool) -> None:
    function = "x => [undefined, () => 1, 10n, (() => { const a = {}; a.self = a; return a; })()][x]"
    outcomes = await pool.run(b"notjson", function, [], [0, 1, 2, 3], 1000)
    assert all(outcome.value is None and outcome.error.startswith("ENOTJSON") for outcome in outcomes)


async def test_a_big_result_is_eresultsize(pool: SandboxPool) -> None:
    outcomes = await pool.run(b"big", "n => 'x'.repeat(n)", [], [32 * 1024 - 2, 32 * 1024, 10**6], 1000)
    assert outcomes[0].value is not None
    assert [outcome.error.split(":")[0] for outcome in outcomes[1:]] == ["ERESULTSIZE", "ERESULTSIZE"]


async def test_check_compiles_without_running_and_gives_v8s_message(pool: SandboxPool) -> None:
    await pool.check("(x) => x")
    await pool.check("async function (x) { while (true); }")  # never called
    with pytest.raises(CompileError, match="SyntaxError: Unexpected token"):
        await pool.check("(x) => {")
    with pytest.raises(CompileError, match="not a function"):
        await pool.check("42")
    with pytest.raises(CompileError, match="in time"):
        await pool.check("(function () { while (true); })()")
    with pytest.raises(CompileError, match="leaves code running"):
        await pool.check("(Promise.resolve().then(() => { while (true); }), (x) => x)")
    assert values(await pool.run(b"next", "x => x", [], [1], 1000)) == [1]


async def test_a_work_function_has_no_io_globals_and_cannot_change_the_builtins(pool: SandboxPool) -> None:
    names = ["require", "fetch", "process", "XMLHttpRequest", "WebSocket", "importScripts", "FinalizationRegistry"]
    function = f"() => {orjson.dumps(names).decode()}.map((name) => typeof globalThis[name])"
    [outcome] = await pool.run(b"globals", function, [], [0], 1000)
    assert orjson.loads(outcome.value) == ["undefined"] * len(names)
    assert values(await pool.run(b"progress", "x => progress()", [], [0], 1000)) == [True]
    # The runner's source, which any function can read, does not hold the token its callers must give.
    steal = "x => { try { return __dm(String(__dm).match(/[0-9a-f]{32}/)[0], 'take'); } catch (e) { return e.name; } }"
    assert values(await pool.run(b"steal", steal, [], [0], 1000)) == ["TypeError"]
    tamper = "x => { Array.prototype.map = () => 'owned'; JSON.stringify = () => '1'; return [1].map((v) => v); }"
    assert values(await pool.run(b"tamper", tamper, [], [0], 1000)) == [[1]]
    assert values(await pool.run(b"victim", "x => [x].map((v) => v + 1)", [], [1], 1000)) == [[2]]


async def test_code_that_assigns_over_a_frozen_builtin_still_works(pool: SandboxPool) -> None:
    # The "override mistake": with frozen prototypes, these assignments would fail without taming.
    subclass = "x => { class E extends Error { constructor(m) { super(m); this.name = 'E'; } }; return `${new E(x)}`; }"
    own = "x => { function A() {} A.prototype.toString = () => 'A!'; return String(new A()); }"
    assert values(await pool.run(b"subclass", subclass, [], ["m"], 1000)) == ["E: m"]
    assert values(await pool.run(b"own", own, [], [0], 1000)) == ["A!"]


async def test_a_callback_left_running_by_a_sync_slice_costs_only_its_batch(pool: SandboxPool) -> None:
    stray = "x => { Promise.resolve().then(() => { while (true); }); return x; }"
    outcomes = await pool.run(b"stray", stray, [], [0, 1], 1000)
    assert all(outcome.error.startswith("ESANDBOX") for outcome in outcomes)
    assert values(await pool.run(b"next", "x => x", [], [1], 1000)) == [1]


async def test_a_child_does_not_inherit_the_nodes_sockets(pool: SandboxPool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        mine = f"socket:[{os.fstat(udp.fileno()).st_ino}]"
        await pool.run(b"fds", "x => x", [], [0], 1000)
        [pid] = sandbox_pids()
        assert mine not in open_files(pid)


async def test_a_killed_child_gives_esandbox_and_the_next_run_works(pool: SandboxPool) -> None:
    running = asyncio.ensure_future(pool.run(b"slow", SPIN, [], list(range(100)), 1000))
    await eventually(lambda: sandbox_pids(), within=10)
    await asyncio.sleep(0.2)  # into the batch
    for pid in sandbox_pids():
        os.kill(pid, signal.SIGKILL)
    outcomes = await running
    assert len(outcomes) == 100 and all(outcome.error.startswith("ESANDBOX") for outcome in outcomes)
    assert values(await pool.run(b"next", "x => x", [], [1], 1000)) == [1]


async def test_cancel_stops_a_running_batch(pool: SandboxPool) -> None:
    running = asyncio.ensure_future(pool.run(b"forever", "x => { while (true); }", [], [0, 1], 5000))
    waiting = asyncio.ensure_future(pool.run(b"forever", "x => x", [], [0], 5000))  # queued behind it
    await eventually(lambda: sandbox_pids(), within=10)
    await asyncio.sleep(0.2)
    pool.cancel(b"forever")
    for task in (running, waiting):
        with pytest.raises(Cancelled):
            await asyncio.wait_for(task, 5)
    assert values(await pool.run(b"other", "x => x", [], [3], 1000)) == [3]


async def test_close_leaves_no_child_process() -> None:
    sandbox = SandboxPool(size=2)
    await asyncio.gather(*(sandbox.run(bytes([n]), "x => x", [], [n], 1000) for n in range(4)))
    assert len(sandbox_pids()) == 2
    await sandbox.close()
    assert sandbox_pids() == set()


async def test_a_warmed_pool_has_its_processes_up_before_any_batch() -> None:
    sandbox = SandboxPool(size=2)
    try:
        await sandbox.warm()
        started = sandbox_pids()
        assert len(started) == 2 and sandbox.busy == 0
        await asyncio.gather(*(sandbox.run(bytes([n]), "x => -x", [], [n], 1000) for n in range(2)))
        assert sandbox_pids() == started  # the batches ran in them, no process started on demand
    finally:
        await sandbox.close()


async def test_the_event_loop_ticks_while_a_slow_batch_runs(pool: SandboxPool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(tick())
    outcomes = await pool.run(b"spin", SPIN, [], list(range(10)), 1000)
    ticking.cancel()
    assert values(outcomes) == list(range(10))
    assert ticks >= 10  # the batch took 0.5 s of V8 at least


async def test_a_sandbox_dies_with_the_node_that_started_it(tmp_path: Path) -> None:
    """A node killed by SIGKILL leaves no sandbox behind, even one spinning in a runaway slice."""
    program = (
        "import asyncio, sys\n"
        "from dhtmesh.node.jobs.sandbox import SandboxPool\n"
        "async def main():\n"
        "    pool = SandboxPool(size=1, memory_mib=64)\n"
        "    print('running', flush=True)\n"
        "    await pool.run(b'j' * 20, 'x => { while (true) {} }', [], [1], 600_000)\n"
        "asyncio.run(main())\n"
    )
    node = await asyncio.create_subprocess_exec(sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE)
    try:
        assert node.stdout is not None and await node.stdout.readline() == b"running\n"
        await eventually(lambda: sandbox_pids(node.pid), within=10)
        children = sandbox_pids(node.pid)
        node.kill()
        await node.wait()
        await eventually(lambda: not (children & set(sandboxes())), within=10)
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
