"""Keeping values where they belong, in the background.

* hand-off: when a proven newcomer is among the k closest to a key that we are the closest holder of,
  it gets that key's values (the stock library tested the wrong point here: flaw F14);
* repair: for keys we are one of the few closest holders of, every replica in the k closest is compared
  by (owner, id) → seq and sent what it lacks, so lost replicas come back; the other holders check that
  the closest node holds the key, and repair it themselves when it does not;
* re-announce: permanent puts made here are announced again before they would expire;
* re-discovery: contacts that stopped answering are probed again, backing off, so a partition heals;
* bucket refresh: a lookup of a random id in every bucket not touched for a while.
"""

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from dhtmesh.node.routing.contact import Contact, distance
from dhtmesh.node.rpcs.storing import Versions, call_versions
from dhtmesh.node.tasks import Supervisor
from dhtmesh.node.values.types import expiry_for
from dhtmesh.node.values.value import Value, owner_ref
from dhtmesh.node.wire.endpoint import RpcFailure

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

log = logging.getLogger(__name__)

MAX_QUEUED_WELCOMES = 1024
TICK = 1.0
REPAIRERS = 3  # the holders closest to a key (in their own view) that repair it
REPAIR_CONCURRENCY = 8
HANDOFF_CONCURRENCY = 8
YIELD_EVERY = 200


def _closest_of_the_others(own_id: bytes, key: bytes, closest: list[Contact], newcomer: Contact) -> bool:
    """Whether we are closer to `key` than every contact in `closest` but the newcomer."""
    own = distance(own_id, key)
    return all(own < distance(c.node_id, key) for c in closest if c.node_id != newcomer.node_id)


class Replicator:
    def __init__(self, node: "DhtNode") -> None:
        self._node = node
        self._welcomes: asyncio.Queue[Contact] | None = None
        self._loops = Supervisor(node.counters)
        self._last_repair = time.monotonic()
        self._last_refresh = time.monotonic()

    def start(self) -> None:
        self._welcomes = asyncio.Queue(MAX_QUEUED_WELCOMES)
        self._loops.start("hand_off", self._hand_off_loop)
        self._loops.start("maintenance", self._maintenance_loop)

    async def stop(self) -> None:
        await self._loops.close()

    def welcome(self, contact: Contact) -> None:
        if self._welcomes is None:
            return
        if self._welcomes.full():
            self._node.counters.add("welcomes_dropped")  # so many newcomers at once: the next repair serves them
        else:
            self._welcomes.put_nowait(contact)

    # ---- hand-off to newcomers ----------------------------------------------------------------

    async def _hand_off_loop(self) -> None:
        assert self._welcomes is not None
        while True:
            newcomers = [await self._welcomes.get()]
            # Let the newcomers' own joins settle, then serve everyone who arrived meanwhile in one scan.
            await asyncio.sleep(self._node.config.handoff_delay)
            while not self._welcomes.empty():
                newcomers.append(self._welcomes.get_nowait())
            await self.hand_off(list(dict.fromkeys(newcomers)))

    async def hand_off(self, newcomers: list[Contact]) -> int:
        """Send each newcomer the values it should now hold and lacks: the keys for which it is among the
        k closest and we are the closest of the others. Returns how many values were sent."""
        node = self._node
        own_id = node.node_id
        window = asyncio.Semaphore(HANDOFF_CONCURRENCY)

        async def send(newcomer: Contact, key: bytes) -> int:
            async with window:
                return await self.send_missing(newcomer, key)

        jobs = []
        keys = node.store.keys()
        # Each hand-off scans every key held: counted, as that is its cost on a node holding many.
        node.counters.add("handoffs", len(newcomers))
        node.counters.add("handoff_keys_scanned", len(keys))
        for index, key in enumerate(keys):
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a node with many keys must keep serving while it scans them
            closest = node.table.closest(key, node.config.k - 1)  # with us, the k replicas of the key
            replica_ids = {c.node_id for c in closest}
            for newcomer in newcomers:
                if newcomer.node_id in replica_ids and _closest_of_the_others(own_id, key, closest, newcomer):
                    jobs.append(send(newcomer, key))
        sent = sum(await asyncio.gather(*jobs))
        if sent:
            node.counters.add("handoff_values", sent)
        return sent

    # ---- periodic duties ----------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        config = self._node.config
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._node.admission.probe_unreachable()
                await self.republish_due()
                now = time.monotonic()
                if now - self._last_repair >= config.repair_interval:
                    self._last_repair = now
                    await self.repair()
                if now - self._last_refresh >= config.bucket_refresh_interval:
                    self._last_refresh = now
                    await self.refresh_buckets()
            except (RpcFailure, OSError):
                # One unreachable or misbehaving replica must not end the duties of this node.
                log.debug("maintenance round failed", exc_info=True)

    async def republish_due(self) -> int:
        node = self._node
        lapsed = node.store.drop_lapsed_announces()
        if lapsed:  # not refreshed by their clients in time: they now expire on their replicas
            node.counters.add("permanent_puts_lapsed", lapsed)
        due = 0
        for key, value in node.store.announces():
            if node.store.remaining_ttl(key, value) > expiry_for(value.type) * node.config.republish_margin:
                continue
            if node.rules.lifetime(value) <= 0:  # past the time its signer gave it: only a newer version may follow
                node.cancel_put(key, value.id)
                continue
            node.store_locally(key, value)
            await node.announce(key, value)
            due += 1
        if due:
            node.counters.add("republished", due)
        return due

    async def repair(self) -> int:
        """One repair round over the keys we hold; returns values re-sent.

        The few holders closest to a key (in their own view) repair it: every replica in the k closest is
        compared and sent what it lacks. Several do, so one that wrongly believes another is closer
        changes nothing. The other holders within the k closest check the closest live node only: after
        churn the closest may all be newcomers that never got the key, and a node that lacks a key cannot
        repair it. A holder that finds such a gap repairs the key itself; in a healthy mesh the check
        finds none and costs one small RPC per key."""
        node = self._node
        window = asyncio.Semaphore(REPAIR_CONCURRENCY)

        async def repair_one(key: bytes, closer: list[Contact]) -> int:
            async with window:
                if len(closer) < REPAIRERS:
                    return await self.repair_key(key)
                return await self.check_closest(key, closer[:REPAIRERS])

        jobs = []
        for key in node.store.keys():
            closer = self._closer_replicas(key)
            if closer is not None:
                jobs.append(repair_one(key, closer))
        sent = sum(await asyncio.gather(*jobs))
        if sent:
            node.counters.add("repaired_values", sent)
        return sent

    def _closer_replicas(self, key: bytes) -> list[Contact] | None:
        """The known contacts closer to `key` than we are, closest first; None if k or more are, so
        that we are not one of the key's replicas in our own view."""
        node = self._node
        own = distance(node.node_id, key)
        closest = node.table.closest(key, node.config.k)
        closer = [c for c in closest if distance(c.node_id, key) < own]
        return None if len(closer) >= node.config.k else closer

    async def repair_key(self, key: bytes) -> int:
        # We are one of the key's k replicas: the other k - 1 are the closest others.
        replicas = (await self._node.lookup(key))[: self._node.config.k - 1]
        return sum(await asyncio.gather(*(self.send_missing(contact, key) for contact in replicas)))

    async def check_closest(self, key: bytes, closest: list[Contact]) -> int:
        """Make sure the first of `closest` that answers (dead contacts may linger in the table until they
        are dropped) holds what we hold of `key`. If it lacked something and took it, the key's repairers
        cannot have been doing their job: repair the whole key here. If it refused (full, or hostile),
        more sending would not help: the next round asks again."""
        for contact in closest:
            remote = await call_versions(self._node.endpoint, contact.address, key)
            if remote is not None:
                fed = await self._send(contact, key, self._lacking(key, remote))
                return fed + await self.repair_key(key) if fed else 0
        return 0

    async def send_missing(self, contact: Contact, key: bytes) -> int:
        """Compare `contact`'s versions of `key` with ours and send it what it lacks or holds older."""
        remote = await call_versions(self._node.endpoint, contact.address, key)
        return 0 if remote is None else await self._send(contact, key, self._lacking(key, remote))

    async def _send(self, contact: Contact, key: bytes, values: list[Value]) -> int:
        """Hand `values` over with what is left of their lives, naming who stored them with us (or us,
        for our own), so that their publisher's refreshes count on the new replica too."""
        node = self._node
        store = node.store
        results = await asyncio.gather(
            *(
                node.store_on(contact, key, v, store.remaining_ttl(key, v), by=store.storer_of(key, v) or node.node_id)
                for v in values
            )
        )
        return sum(results)

    def _lacking(self, key: bytes, remote: Versions) -> list[Value]:
        """Our values of `key` that `remote` (versions by `owner_ref` and id) lacks or holds older."""
        return [v for v in self._node.store.get(key) if remote.get((owner_ref(v.owner), v.id), -1) < v.seq]

    async def refresh_buckets(self) -> None:
        node = self._node
        for low, high in node.table.stale_buckets(node.config.bucket_refresh_interval):
            target = random.randrange(low, high).to_bytes(20, "big")
            await node.lookup(target)
