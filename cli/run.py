"""`dhtmesh run`: start one node and its proxy, join the mesh, serve until SIGINT/SIGTERM."""

import argparse
import asyncio
import errno
import ipaddress
import logging
import resource
import signal
import socket
import sqlite3
import sys
from collections.abc import Awaitable
from pathlib import Path

from dhtmesh.bootstrap.addresses import AddressError, family_name, resolve, socket_family
from dhtmesh.bootstrap.join import Joiner
from dhtmesh.bootstrap.peers import PeerBook
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.farmer import check_payout
from dhtmesh.cli.lock import lock_data_dir
from dhtmesh.cli.paths import PEERS_FILE, default_data_dir, identity_path, load_or_create_identity
from dhtmesh.crypto.opendht import OpenDhtKeyError, RsaIdentity, load_or_create_rsa_identity
from dhtmesh.node.audits.auditor import DEFAULT_AUDIT_PERIOD
from dhtmesh.node.blobs.holder import DEFAULT_PENDING_TIMEOUT
from dhtmesh.node.dht import DhtNode, PutRefused
from dhtmesh.node.records.blob import MAX_CHUNKS
from dhtmesh.node.records.farmer import HEIGHT_LIMIT
from dhtmesh.node.records.farmer_events import MAX_PING
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.services import DEFAULT_SLICE_MEMORY, DEFAULT_SLICE_MS, Farming, Services, Working
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.transfer.binding import BindError, start_with_stream_socket
from dhtmesh.node.transfer.port_limits import connection_cap
from dhtmesh.node.values import InvalidValue
from dhtmesh.node.wire.netgroup import format_host_port
from dhtmesh.node.wire.ratelimit import Address
from dhtmesh.proxy.app import ProxyServer
from dhtmesh.proxy.origins import parse_origin

log = logging.getLogger("dhtmesh.run")
OPENDHT_IDENTITY_FILE = "opendht-identity.pem"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--port", type=int, default=4222, help="UDP port of the node; 0 picks a free one")
    parser.add_argument("--bind", default="0.0.0.0", help="address the UDP socket binds to (:: for IPv6)")
    parser.add_argument(
        "-b",
        "--bootstrap",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node of the mesh to join ([v6]:PORT for IPv6); repeatable. None: this node starts a new mesh",
    )
    parser.add_argument(
        "--proxyserver", type=int, default=8080, metavar="HTTP_PORT", help="HTTP port of the proxy; 0 picks a free one"
    )
    parser.add_argument("--proxy-addr", default="127.0.0.1", help="address the proxy listens on")
    parser.add_argument("--pushserver", metavar="URL", help="push gateway (gorush-style POST URL/api/push)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (scheme://host[:port]) whose pages may change state through the proxy; repeatable",
    )
    parser.add_argument(
        "--persist", metavar="DIR", help="data directory (default: $XDG_DATA_HOME/dhtmesh, else ~/.local/share/dhtmesh)"
    )
    parser.add_argument("-i", "--identity", metavar="FILE", help="identity file (default: DIR/identity.json)")
    parser.add_argument(
        "--opendht-identity",
        nargs="?",
        const=OPENDHT_IDENTITY_FILE,
        metavar="FILE",
        help="sign and encrypt values for callers (/key/K/sign, /key/K/encrypt) with an OpenDHT (RSA-4096) "
        f"identity, so that OpenDHT clients can check them; made on first use (FILE: DIR/{OPENDHT_IDENTITY_FILE})",
    )
    parser.add_argument("--blob-limit", type=int, default=1024, metavar="MIB", help="largest blob the proxy takes")
    farmer = parser.add_argument_group("farming", "register this node as a farmer and keep it online")
    farmer.add_argument("--farmer", action="store_true", help="register, report height, ping every minute")
    farmer.add_argument("--payout", metavar="ADDR", help="payout address (default: this node's own address)")
    farmer.add_argument("--height", type=int, metavar="N", help="capacity to report, in 128 MiB shards")
    farmer.add_argument("--ping-interval", type=float, default=MAX_PING, metavar="S", help=argparse.SUPPRESS)
    farmer.add_argument("--chunk-quota", type=int, default=1024, metavar="MIB", help="room for the mesh's chunks")
    farmer.add_argument(
        "--audit-period", type=float, default=DEFAULT_AUDIT_PERIOD, metavar="S", help="seconds between audits of others"
    )
    farmer.add_argument(
        "--pending-timeout",
        type=float,
        default=DEFAULT_PENDING_TIMEOUT,
        metavar="S",
        help="seconds a chunk of an unfinished upload is kept",
    )


    worker = parser.add_argument_group("jobs", "compute slices of the mesh's jobs in sandboxes")
    worker.add_argument("--worker", action="store_true", help="take slices of open jobs and compute them")
    worker.add_argument("--sandboxes", type=int, default=1, metavar="N", help="slices batches computed at once")
    worker.add_argument(
        "--slice-memory", type=int, default=DEFAULT_SLICE_MEMORY, metavar="MIB", help="V8 heap limit per sandbox"
    )
    worker.add_argument(
        "--slice-time", type=int, default=DEFAULT_SLICE_MS, metavar="MS", help="longest a slice may run here"
    )


def command(args: argparse.Namespace) -> int:
    for name in ("port", "proxyserver"):
        if not 0 <= getattr(args, name) < 65536:
            raise CliError(f"--{name} must be between 0 and 65535")
    if not 0 < args.blob_limit <= MAX_CHUNKS * 4:
        raise CliError(f"--blob-limit must be between 1 and {MAX_CHUNKS * 4} MiB (what a manifest can list)")
    _check_farming(args)
    _check_working(args)
    args.allow_origin = _allowed_origins(args.allow_origin)
    data_dir = Path(args.persist) if args.persist else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot use data directory {data_dir}: {error}") from error
    with lock_data_dir(data_dir):
        return _run_locked(args, data_dir)


def _run_locked(args: argparse.Namespace, data_dir: Path) -> int:
    identity = load_or_create_identity(identity_path(data_dir, args.identity), explicit=bool(args.identity))
    bootstrap = _bootstrap(args.bootstrap, args.bind)
    opendht_identity = _opendht_identity(data_dir, args.opendht_identity)
    try:
        node = DhtNode(identity, data_dir=data_dir, opendht_identity=opendht_identity, rules=RECORD_RULES)
    except sqlite3.DatabaseError as error:
        raise CliError(f"cannot open the value store in {data_dir}: {error}") from error
    _run_loop(_serve(node, args, bootstrap, data_dir, _raise_descriptor_limit()))
    return 0


def _bootstrap(specs: list[str], bind: str) -> list[Address]:
    """The bootstrap addresses the node's socket can reach. A socket sends only to addresses of its own
    family (uvloop raises "socket family mismatch" otherwise): the others are skipped with a warning,
    and when none is left, the node is refused with one line rather than started unable to join."""
    family = socket_family(bind)
    try:
        resolved = {spec: resolve(spec, family=family) for spec in specs}
    except AddressError as error:
        raise CliError(str(error)) from error
    usable = [address for address in resolved.values() if socket_family(address[0]) == family]
    other = [spec for spec, address in resolved.items() if socket_family(address[0]) != family]
    if other:
        why = f"the node's UDP socket is {family_name(family)} (--bind {bind})"
        if not usable:
            raise CliError(f"cannot join through {', '.join(other)}: {why}; bind to an address of their family")
        log.warning("skipping bootstrap %s: %s; joining through the others", ", ".join(other), why)
    return usable


def _opendht_identity(data_dir: Path, name: str | None) -> RsaIdentity | None:
    if name is None:
        return None
    try:
        return load_or_create_rsa_identity(data_dir / name)  # an absolute name stays as it is
    except (OpenDhtKeyError, OSError) as error:
        raise CliError(f"--opendht-identity: {error}") from error


def _raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one (a soft 1,024 is a common default, which a
    farmer's streams and proxy clients can exhaust); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY  # as a hard limit it cannot be asked for (macOS)
    if unlimited not in (soft, hard) and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, error)
    return soft if soft != unlimited else 1 << 20


def _allowed_origins(texts: list[str]) -> frozenset[str]:
    try:
        return frozenset(parse_origin(text) for text in texts)
    except ValueError as error:
        raise CliError(f"--allow-origin: {error}") from error


def _check_working(args: argparse.Namespace) -> None:
    if not args.worker and (args.sandboxes != 1 or args.slice_memory != DEFAULT_SLICE_MEMORY):
        raise CliError("--sandboxes and --slice-memory need --worker")
    if not (1 <= args.sandboxes <= 64 and 16 <= args.slice_memory <= 16384 and 1 <= args.slice_time <= 3_600_000):
        raise CliError("--sandboxes is 1 to 64, --slice-memory 16 to 16384 MiB, --slice-time 1 to 3600000 ms")


def _check_farming(args: argparse.Namespace) -> None:
    if not args.farmer and (args.payout or args.height is not None):
        raise CliError("--payout and --height need --farmer")
    check_payout(args.payout)
    if args.height is not None and not 0 <= args.height <= HEIGHT_LIMIT:
        raise CliError(f"--height must be between 0 and {HEIGHT_LIMIT}")
    if not args.ping_interval > 0:
        raise CliError("--ping-interval must be positive")
    if not args.chunk_quota > 0:
        raise CliError("--chunk-quota must be positive")
    # Below a second, audits would flood the mesh and uploads could not finish before their chunks go.
    for flag, seconds in (("--audit-period", args.audit_period), ("--pending-timeout", args.pending_timeout)):
        if not 1 <= seconds < 1e9:  # also refuses nan
            raise CliError(f"{flag} must be at least 1 second")


def _run_loop(main: object) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main)  # type: ignore[arg-type]


async def _serve(node: DhtNode, args: argparse.Namespace, bootstrap: list, data_dir: Path, descriptors: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stream_socket = await _bind(node, args)
    try:
        farming = _farming(args, data_dir, descriptors) if args.farmer else None
    except CliError:
        stream_socket.close()  # the chunk store could not open: no service takes the socket
        await node.stop()
        raise
    working = Working(args.sandboxes, args.slice_memory, args.slice_time) if args.worker else None
    services = Services(node, farming, working)
    blob_limit = args.blob_limit * 1024 * 1024
    proxy = ProxyServer(
        node, args.proxy_addr, args.proxyserver, args.pushserver, blob_limit, args.allow_origin, services=services
    )
    try:
        await _start(proxy.start(), args.proxy_addr, args.proxyserver, "proxy")
        await services.start(stream_socket)
        joiner = Joiner(node, bootstrap, PeerBook(data_dir / PEERS_FILE))
        # Held here at once, and handed to the key's replicas as they join: see `Replicator.hand_off`.
        try:
            await node.publish_opendht_certificate()
        except (PutRefused, InvalidValue) as error:
            log.error("cannot publish this node's OpenDHT certificate: %s", error)
        print(f"ready node_id={node.node_id.hex()} udp={format_host_port(*node.address)} proxy={proxy.url}", flush=True)
        services.run(("join", joiner.run))
        await stop.wait()
        joiner.save()
    finally:
        await proxy.stop()  # first: no request may reach a service once it is stopped
        await services.stop()
        await node.stop()
    print("stopped", file=sys.stderr, flush=True)


def _farming(args: argparse.Namespace, data_dir: Path, descriptors: int) -> Farming:
    return Farming(
        _chunk_store(args, data_dir),
        args.payout,
        args.height,
        args.ping_interval,
        _declared_ip(args.bind),
        args.audit_period,
        args.pending_timeout,
        connection_cap(descriptors),
    )


async def _bind(node: DhtNode, args: argparse.Namespace) -> socket.socket:
    """Start the node's UDP socket and the TCP socket its port listens on (the streams' replicas, a
    farmer's chunks), at the same address and port (`start_with_stream_socket`)."""
    try:
        return await start_with_stream_socket(node, args.bind, args.port)
    except BindError as error:
        raise _bind_error(error, args.bind, error.port, error.what) from error


def _chunk_store(args: argparse.Namespace, data_dir: Path) -> ChunkStore:
    try:
        return ChunkStore(data_dir / "chunks", args.chunk_quota * 1024 * 1024)
    except (OSError, sqlite3.DatabaseError) as error:
        raise CliError(f"cannot open the chunk store in {data_dir / 'chunks'}: {error}") from error


def _declared_ip(bind: str) -> str:
    """The address a farmer states in its record: where its node is reached, if bound to one."""
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        return ""
    return "" if address.is_unspecified else str(address)


async def _start(starting: Awaitable[None], host: str, port: int, what: str) -> None:
    try:
        await starting
    except OSError as error:
        raise _bind_error(error, host, port, what) from error


def _bind_error(error: OSError, host: str, port: int, what: str) -> CliError:
    if error.errno == errno.EADDRINUSE:
        return CliError(f"{what} port {port} on {host} is already in use")
    return CliError(f"cannot open {what} socket on {host}:{port}: {error.strerror or error}")
