"""How many contacts may share a host or a subnet: in a bucket of the routing table, in the contacts a
find reply hands out, and among a lookup's k closest (its candidates and its result).

Node ids cost nothing to make: one machine can make ids next to any key in a fraction of a second. If
they could all enter a bucket, or all be among a key's k closest, they would be every replica of that
key (an eclipse: 25 such ids on one IP took all 20 replicas of a put). Capping contacts per host and per
subnet (as BitTorrent DHTs do) keeps honest nodes among every k closest, whatever one host or network
makes up. The contact a lookup is looking for (its own id) is always admitted, so a node can be found
even where its neighbours crowd its host.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from dhtmesh.node.routing.contact import Contact


@dataclass(frozen=True, slots=True)
class Diversity:
    per_host: int = 2  # a machine may run a couple of nodes
    per_subnet: int = 10  # half of k: one network never holds a majority of a key's replicas

    def pick(self, contacts: Iterable[Contact], count: int, target: bytes | None = None) -> list[Contact]:
        """The first `count` of `contacts` (in their order) that keep within the caps; `target`'s own
        contact, if met, is always taken."""
        # Plain dicts and groups computed once per contact: this runs on every answer a lookup gets and
        # on every find a node serves.
        hosts: dict[str, int] = {}
        subnets: dict[str, int] = {}
        picked: list[Contact] = []
        if count <= 0:
            return picked
        for contact in contacts:
            host, subnet = contact.host_group, contact.subnet_group
            on_host, in_subnet = hosts.get(host, 0), subnets.get(subnet, 0)
            if (on_host >= self.per_host or in_subnet >= self.per_subnet) and contact.node_id != target:
                continue
            hosts[host] = on_host + 1
            subnets[subnet] = in_subnet + 1
            picked.append(contact)
            if len(picked) >= count:
                break
        return picked

    def admits(self, present: Iterable[Contact], newcomer: Contact) -> bool:
        """Whether `newcomer` may join `present` (a bucket) without breaking a cap."""
        host, subnet = newcomer.host_group, newcomer.subnet_group
        same_host = same_subnet = 0
        for contact in present:
            if contact.node_id == newcomer.node_id:
                continue
            same_host += contact.host_group == host
            same_subnet += contact.subnet_group == subnet
        return same_host < self.per_host and same_subnet < self.per_subnet


UNLIMITED = Diversity(per_host=1 << 30, per_subnet=1 << 30)
"""No caps: the textbook table and lookup (used by tests that compare against them)."""
