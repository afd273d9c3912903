"""The program a sandbox process runs (`python -m dhtmesh.node.jobs.sandbox_child MEMORY_MIB`): work functions
in one V8 context (mini-racer), batches asked for over stdin and outcomes sent back over stdout, as
length-prefixed msgpack frames (see `sandbox.py`, the pool in the node, for the protocol).

Untrusted JavaScript never runs in the node's process; here it runs under a hard memory limit, with a time
limit per slice, in a context whose built-ins are frozen (so one job cannot change what another job's
functions compute) and which has no I/O at all. A whole batch runs in one call into V8; only a slice that
times out, runs out of memory or returns a promise takes the slower paths.
"""

import ctypes
import os
import resource
import secrets
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import orjson
from py_mini_racer import JSEvalException, JSOOMException, JSTimeoutException, MiniRacer

MAX_RESULT = 32 * 1024  # bytes of a canonical result
MAX_FRAME = 64 * 1024 * 1024
CACHE_SIZE = 16  # compiled functions kept, by job
CHECK_TIMEOUT = 1.0  # s a function text may take to evaluate to a function
# After a batch, the context must answer this fast: a promise or timer callback the batch left behind that
# still runs would otherwise be charged to the next batch, another job's maybe.
IDLE_TIMEOUT = 1.0
RAN_ENOUGH = 0.9  # of its time limit: a slice that ran this long before its call timed out is too slow
HEADER = struct.Struct(">I")
PR_SET_PDEATHSIG = 1  # prctl(2)
# ArrayBuffers (typed arrays, WebAssembly memories) live outside V8's heap, so the heap limit misses them:
# the process's data size is capped instead, this much above what it uses once V8 is up (and over
# `memory_mib` twice: heap and buffers), and V8 throws this when a buffer does not fit.
HEADROOM = 256 * 1024 * 1024
BUFFER_FAILED = "RangeError: Array buffer allocation failed"

# The runner: every call into V8 is `__dm(TOKEN, op, ...)`. The token is drawn per context, given by the
# first call (so that it is not in the runner's source, which any function can read with toString) and
# then only in the source of our own calls: a work function, or a timer it left behind, cannot drive the
# runner. State lives in the closure. Outcomes: [0, json, ms] a result, [1, message, ms] a throw, [2, message, ms]
# not JSON, [3, "", ms] too big already in V8.
RUNNER = r"""
(() => {
  'use strict';
  const CACHE = %(cache)d, MAX_JS = %(max_js)d, MAX_MESSAGE = 1000;
  let TOKEN;
  const fns = new Map();
  const indirectEval = eval;
  let batch = null;
  // mini-racer's setTimeout keeps its state on a global object a work function could rewrite: these keep
  // theirs here (and a delay of 0 does not throw: waitAsync then answers synchronously). A batch's timers
  // that have not fired when it ends never do: they would run in the next batch's time, another job's.
  const waitAsync = Atomics.waitAsync, live = new Set();
  let next = 1;
  globalThis.setTimeout = (fn, delay, ...args) => {
    const id = next++, wait = waitAsync(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.max(0, +delay || 0));
    live.add(id);
    (wait.async ? wait.value : Promise.resolve()).then(() => { if (live.delete(id)) fn(...args); });
    return id;
  };
  globalThis.clearTimeout = (id) => { live.delete(id); };
  globalThis.__timer_manager = undefined;
  const describe = (e) => {
    let text;
    try { text = (e instanceof Error) ? `${e.name}: ${e.message}` : String(e); } catch { text = 'unprintable error'; }
    return text.length > MAX_MESSAGE ? text.slice(0, MAX_MESSAGE) + '...' : text;
  };
  const encode = (value, ms) => {
    let text;
    try { text = JSON.stringify(value); } catch (e) { return [2, describe(e), ms]; }
    if (typeof text !== 'string') return [2, `result is ${typeof value}`, ms];
    return text.length > MAX_JS ? [3, '', ms] : [0, text, ms];
  };
  const compile = (key, source) => {
    const known = fns.get(key);
    if (known !== undefined && known.source === source) { fns.delete(key); fns.set(key, known); return ''; }
    let fn;
    try { fn = indirectEval('(' + source + '\n)'); } catch (e) { return describe(e); }
    if (typeof fn !== 'function') return `work function is ${typeof fn}, not a function`;
    fns.delete(key);
    fns.set(key, {source, fn});
    if (fns.size > CACHE) fns.delete(fns.keys().next().value);
    return '';
  };
  // Runs slices from batch.at on, `limit` of them at most; 'async' when one returned a promise.
  const go = (limit) => {
    const b = batch;
    for (const end = Math.min(b.data.length, b.at + limit); b.at < end; b.at++) {
      const started = b.began = Date.now();
      let result;
      try {
        result = b.fn(b.data[b.at], ...b.args);
        if (result !== null && (typeof result === 'object' || typeof result === 'function')
            && typeof result.then === 'function') {
          const at = b.at;
          b.pending = at;
          const settle = (outcome) => { if (b.pending === at) { b.out.push(outcome); b.pending = -1; b.at++; } };
          Promise.resolve(result).then((v) => settle(encode(v, Date.now() - started)),
                                       (e) => settle([1, describe(e), Date.now() - started]));
          return 'async';
        }
      } catch (e) { b.out.push([1, describe(e), Date.now() - started]); continue; }
      b.out.push(encode(result, Date.now() - started));
    }
    return b.at < b.data.length ? 'more' : 'done';
  };
  const ops = {
    compile,
    start: (key, args, data) => {
      batch = {fn: fns.get(key).fn, args: JSON.parse(args), data: JSON.parse(data), at: 0, out: [], pending: -1,
               began: null};
      return '';
    },
    go: (limit) => go(limit),
    // Gives up on the slice running (a timeout, a promise never settled): the caller records its outcome.
    skip: () => { batch.pending = -1; batch.at++; return ''; },
    take: () => { const out = batch.out; batch.out = []; return JSON.stringify([batch.pending, batch.began, out]); },
    idle: () => { live.clear(); return ''; },
  };
  return (token, op, ...rest) => {
    if (TOKEN === undefined) TOKEN = token;
    if (token !== TOKEN) throw new Error('not the runner\'s caller');
    return ops[op](...rest);
  };
})()
"""

# Freezes every built-in reachable from the global object, and the global object: a work function can
# still compute anything, but no longer change what Array.prototype.map or JSON.stringify do for the next.
LOCKDOWN = r"""
(() => {
  'use strict';
  const seen = new Set();
  const harden = (root) => {
    const todo = [root];
    while (todo.length) {
      const value = todo.pop();
      if ((typeof value !== 'object' && typeof value !== 'function') || value === null || seen.has(value)) continue;
      seen.add(value);
      Object.freeze(value);
      todo.push(Object.getPrototypeOf(value));
      for (const key of Reflect.ownKeys(value)) {
        const d = Reflect.getOwnPropertyDescriptor(value, key);
        todo.push(d.value, d.get, d.set);
      }
    }
  };
  globalThis.progress = () => true;  // DCP's progress(): a no-op here
  // Ways to have code run later, outside any call of ours and so outside every time limit, other than
  // the runner's setTimeout (whose timers end with their batch).
  delete Atomics.waitAsync;
  delete globalThis.FinalizationRegistry;
  // Frozen prototypes would make `this.name = ...` in an Error subclass, or `A.prototype.toString = ...`,
  // fail (the "override mistake"): these few properties become accessors whose setter defines the property
  // on the object assigned to, as SES does.
  const later = [];
  const tame = (proto, keys) => {
    for (const key of keys) {
      const d = Reflect.getOwnPropertyDescriptor(proto, key);
      if (d === undefined || !('value' in d) || !d.configurable) continue;
      const value = d.value;
      later.push(value);  // frozen after every prototype is tamed: freezing one freezes its chain
      Object.defineProperty(proto, key, {
        get() { return value; },
        set(replacement) {
          if (this === proto) throw new TypeError(`Cannot assign to read only property '${String(key)}'`);
          Object.defineProperty(this, key, {value: replacement, writable: true, enumerable: true, configurable: true});
        },
        enumerable: d.enumerable, configurable: false,
      });
    }
  };
  tame(Object.prototype, ['constructor', 'toString', 'valueOf', 'toLocaleString', 'hasOwnProperty']);
  tame(Function.prototype, ['constructor', 'toString']);
  tame(Array.prototype, ['constructor', 'toString']);
  tame(Promise.prototype, ['constructor']);
  for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError, AggregateError]) {
    tame(E.prototype, ['constructor', 'name', 'message', 'toString']);
  }
  later.forEach(harden);
  harden(globalThis);
  return '';
})()
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    value: bytes | None
    error: str | None
    ms: float

    def wire(self) -> list:
        return [self.value, self.error, self.ms]


class Stuck(Exception):
    """The context runs JavaScript that no timeout can stop (a callback no task owns): this process must end."""


class CompileFailed(Exception):
    """The work function does not evaluate to a function; str() is V8's message."""


class Context:
    """One V8 context with the runner installed, recreated whole after it ran out of memory."""

    def __init__(self, memory_mib: int) -> None:
        self.memory_mib = memory_mib
        self._token = ""
        self._open()

    def _open(self) -> None:
        racer = MiniRacer()
        racer.set_hard_memory_limit(self.memory_mib * 1024 * 1024)
        self._token = secrets.token_hex(16)
        script = RUNNER % {"cache": CACHE_SIZE, "max_js": 4 * MAX_RESULT}
        racer.eval(f"globalThis.__dm = {script}; {LOCKDOWN}")
        self._racer = racer
        self.call("idle", timeout=IDLE_TIMEOUT)  # the first call: it sets the token

    def renew(self) -> None:
        self._racer.close()
        self._open()

    def call(self, op: str, *args: Any, timeout: float) -> Any:
        """The runner's `op`. An eval, not a JS function call: only an eval's timeout still works while the
        context is busy with a callback no task owns (mini-racer's function calls would block for ever)."""
        code = "".join(["__dm(", orjson.dumps(self._token).decode(), ",", orjson.dumps(op).decode()])
        code += "".join("," + orjson.dumps(arg).decode() for arg in args) + ")"
        return self._racer.eval(code, timeout_sec=timeout)

    def compile(self, key: str, function: str) -> None:
        try:
            message = self.call("compile", key, function, timeout=CHECK_TIMEOUT)
        except JSTimeoutException:
            raise CompileFailed("work function does not evaluate to a function in time") from None
        except JSOOMException:
            self.renew()
            raise CompileFailed("work function runs out of memory as it is evaluated") from None
        if message:
            raise CompileFailed(message)

    def settled(self) -> bool:
        """Whether the context answers: not when a callback left by the code it last ran runs on."""
        try:
            self.call("idle", timeout=IDLE_TIMEOUT)
        except JSTimeoutException:
            return False
        return True

    def out_of_memory(self) -> bool:
        return self._racer.was_hard_memory_limit_reached()


def canonical(text: str, ms: float) -> Outcome:
    try:
        value = orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError as error:
        return Outcome(None, f"ENOTJSON: {error}", ms)
    if len(value) > MAX_RESULT:
        return Outcome(None, f"ERESULTSIZE: result of {len(value)} bytes, over {MAX_RESULT}", ms)
    return Outcome(value, None, ms)


def outcome_of(raw: list) -> Outcome:
    kind, text, ms = raw
    if kind == 0:
        return canonical(text, ms)
    if kind == 1 and text.startswith(BUFFER_FAILED):
        return Outcome(None, f"ENOMEM: {text}", ms)
    if kind == 1:
        return Outcome(None, f"EUNCAUGHT: {text}", ms)
    if kind == 2:
        return Outcome(None, f"ENOTJSON: {text}", ms)
    return Outcome(None, f"ERESULTSIZE: result over {MAX_RESULT} bytes", ms)


Send = Callable[[list[Outcome], bool], None]


class Batch:
    """One batch of one job run to its end in `context`, its outcomes sent as they become known.

    The rest of the batch runs in one call into V8 (a segment); a call that times out leaves the outcomes
    of the slices before it, the slice then running gets one more try alone (unless the call had started
    with it), and a new segment starts after it. A slice that returns a promise ends the call: it is awaited
    here, polling the context, with the same limit."""

    def __init__(self, context: Context, send: Send, request: dict) -> None:
        self._context = context
        self._send = send
        self._job = request["job"].hex()
        self._function: str = request["function"]
        self._args: str = request["args"].decode()
        self._data: list = orjson.loads(request["data"])
        self._timeout: float = request["timeout_ms"] / 1000
        self._outcomes: list[Outcome] = []
        self._sent = 0
        self._began: float | None = None  # when the slice running began, by the runner's clock (ms, epoch)

    def run(self) -> None:
        """Raises CompileFailed, or Stuck after sending what is known."""
        while len(self._outcomes) < len(self._data):
            self._segment()
            if len(self._outcomes) < len(self._data):
                self._flush(bye=False)
        self._quick("idle")
        self._flush(bye=False)

    def _flush(self, bye: bool) -> None:
        self._send(self._outcomes[self._sent :], bye)
        self._sent = len(self._outcomes)

    def _segment(self) -> None:
        self._context.compile(self._job, self._function)
        rest = orjson.dumps(self._data[len(self._outcomes) :]).decode()
        started = time.monotonic()
        self._quick("start", self._job, self._args, rest, timeout=IDLE_TIMEOUT + self._timeout)  # parses the data
        try:
            state = self._context.call("go", 1e9, timeout=self._timeout)
            while True:
                if state == "async":
                    self._settle()
                else:
                    self._collect()
                if state == "done":
                    return
                started = time.monotonic()
                state = self._context.call("go", 1e9, timeout=self._timeout)
        except JSTimeoutException:
            self._collect()
            if self._ran_its_time():
                self._give_up(f"ESLICETOOSLOW: slice ran over {self._timeout * 1000:.0f} ms")
            else:
                self._retry_alone()
        except JSOOMException:
            self._out_of_memory(started)

    def _quick(self, op: str, *args: Any, timeout: float = IDLE_TIMEOUT) -> Any:
        """A call that runs no work function: if it times out, a callback left behind by some slice runs
        on, and only ending this process stops it."""
        try:
            return self._context.call(op, *args, timeout=timeout)
        except JSTimeoutException:
            self._flush(bye=True)
            raise Stuck from None

    def _collect(self, taken: str | None = None) -> int:
        """Takes the outcomes the runner holds; the index of the slice whose promise is awaited, else -1."""
        pending, self._began, raw = orjson.loads(taken if taken is not None else self._quick("take"))
        self._outcomes.extend(outcome_of(item) for item in raw)
        return pending

    def _ran_its_time(self) -> bool:
        """Whether the slice running when a call timed out had (nearly) the whole limit to itself; if not
        (slices before it in the call, or a callback of an earlier batch that delayed the call), it gets
        one more try alone."""
        if self._began is None:  # the call was held up before its first slice
            return False
        return time.time() * 1000 - self._began >= RAN_ENOUGH * self._timeout * 1000

    def _settle(self) -> None:
        """Waits for the promise the slice returned, polling the context (timers and callbacks run between
        calls into it)."""
        self._flush(bye=False)
        deadline = time.monotonic() + self._timeout
        pause = 0.0002
        while True:
            left = deadline - time.monotonic()
            try:
                taken = self._context.call("take", timeout=max(left, 0) + IDLE_TIMEOUT)
            except JSTimeoutException:
                self._outcomes.append(
                    Outcome(None, "ESLICETOOSLOW: a callback of the slice ran on", self._timeout * 1000)
                )
                self._flush(bye=True)
                raise Stuck from None
            pending = self._collect(taken)
            if self._context.out_of_memory():
                raise JSOOMException("out of memory in a callback")
            if pending < 0:
                return
            if left <= 0:
                self._give_up(f"ESLICETOOSLOW: promise not settled in {self._timeout * 1000:.0f} ms")
                return
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.01)

    def _retry_alone(self) -> None:
        started = time.monotonic()
        try:
            if self._context.call("go", 1, timeout=self._timeout) == "async":
                self._settle()
            else:
                self._collect()
        except JSTimeoutException:
            self._collect()
            self._give_up(f"ESLICETOOSLOW: slice ran over {self._timeout * 1000:.0f} ms")
        except JSOOMException:
            self._out_of_memory(started)

    def _give_up(self, error: str) -> None:
        self._quick("skip")
        self._outcomes.append(Outcome(None, error, self._timeout * 1000))

    def _out_of_memory(self, started: float) -> None:
        """The slice running gets ENOMEM and the context is made anew; the batch goes on after that slice."""
        try:
            self._collect()
        except JSEvalException:
            pass  # those slices run again, in the new context
        ms = (time.monotonic() - started) * 1000
        self._outcomes.append(Outcome(None, f"ENOMEM: over the limit of {self._context.memory_mib} MiB", ms))
        self._context.renew()


def read_frame(stream: BinaryIO) -> dict | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError("frame too big")
    return msgpack.unpackb(stream.read(size), raw=False)


def write_frame(stream: BinaryIO, message: dict) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def serve(requests: BinaryIO, replies: BinaryIO, memory_mib: int) -> None:
    context = Context(memory_mib)
    cap_data_size(memory_mib)

    def send(outcomes: list[Outcome], bye: bool) -> None:
        write_frame(replies, {"o": [outcome.wire() for outcome in outcomes], "bye": bye})

    while (request := read_frame(requests)) is not None:
        try:
            if request["op"] == "check":
                context.compile("check", request["function"])
                if not context.settled():
                    write_frame(replies, {"compile": "work function leaves code running once evaluated", "bye": True})
                    return
                write_frame(replies, {"ok": True})
            else:
                Batch(context, send, request).run()
        except CompileFailed as error:
            write_frame(replies, {"compile": str(error)})
        except Stuck:
            return


def cap_data_size(memory_mib: int) -> None:
    """Caps the process's data segment (RLIMIT_DATA) above what it uses now; Linux only (/proc)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return
    used_kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmData:")), None)
    if used_kib is not None:
        cap = used_kib * 1024 + 2 * memory_mib * 1024 * 1024 + HEADROOM
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def _die_with_parent(parent: int) -> None:
    """Be killed when the node that started this process (`parent`) dies, even by SIGKILL (Linux's
    parent-death signal), so that no sandbox outlives its node, running a runaway slice for nobody."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the closed stdin ends this process once it is between batches
    if os.getppid() != parent:
        os._exit(0)  # the node died before the signal was set (it started this one with its pid)


def main() -> None:
    _die_with_parent(int(sys.argv[2]))
    # The frames go out on a copy of stdout; fd 1 itself points to /dev/null so that nothing else written
    # there (V8, a library) can break a frame.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    serve(sys.stdin.buffer, replies, int(sys.argv[1]))
    replies.flush()
    os._exit(0)  # a context stuck in a callback would keep an orderly exit waiting for ever


if __name__ == "__main__":
    main()
