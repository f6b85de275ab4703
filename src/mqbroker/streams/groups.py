"""Consumer groups over streams: partitions split among live members, and
a committed offset per group and partition that survives restarts.

Strategy (Kafka's model over plain AMQP 0-9-1): a group is its name plus
the partitions it reads (one stream, or a super stream's partition
streams). Members are kept in join order; partition ``i`` belongs to
member ``i % members``, so on a plain stream one member is active and the
others stand by. Any join or leave rebalances: a partition whose owner
changes starts a new generation, read by the new owner from the committed
offset, and acks of the old generation are ignored, so nothing is skipped
(what was delivered but not acked comes again). The committed offset is
the contiguous acked point + 1, stored as a definition record, so it is
group-committed with everything else and recovered with the topology.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mqbroker.persistence.store import Store
from mqbroker.queues.consumer import Consumer
from mqbroker.queues.entry import QueueEntry

if TYPE_CHECKING:
    from mqbroker.streams.arguments import StartSpec
    from mqbroker.streams.queue import Cursor, StreamQueue

KIND = "stream-group"


def offset_key(vhost: str, group: str, partition: str) -> str:
    return f"{vhost}\x00{group}\x00{partition}"


class GroupEntry(QueueEntry):
    """A delivery of a group partition: knows its generation."""

    __slots__ = ("state", "generation")
    state: PartitionState
    generation: int


class PartitionState:
    """One group's hold on one partition."""

    def __init__(self, group: Group, partition: StreamQueue, committed: int | None) -> None:
        self.group = group
        self.partition = partition
        self.committed = committed  # None: never committed, the spec decides
        self.owner: Consumer | None = None
        self.cursor: Cursor | None = None
        self.generation = 0
        # offsets delivered in this generation, in order, with acked flags
        self.in_flight: deque[list[Any]] = deque()

    def start(self, owner: Consumer | None, spec: StartSpec) -> None:
        """A new owner (or none): a new generation from the committed offset."""
        self.generation += 1
        self.in_flight.clear()
        if self.cursor is not None:
            self.cursor.reader.close()
        self.owner, self.cursor = owner, None
        if owner is not None:
            start = (
                self.committed if self.committed is not None
                else self.partition.start_offset(spec)
            )
            self.cursor = self.partition.new_cursor(start, None)

    def delivered(self, offset: int, *, acked: bool = False) -> None:
        self.in_flight.append([offset, acked])
        if acked:
            self._advance()

    def acked(self, entry: GroupEntry) -> None:
        if entry.generation != self.generation:
            return  # the partition moved on: the new owner re-reads it
        for item in self.in_flight:
            if item[0] == entry.seq:
                item[1] = True
                break
        self._advance()

    def _advance(self) -> None:
        moved = False
        while self.in_flight and self.in_flight[0][1]:
            self.committed = self.in_flight.popleft()[0] + 1
            moved = True
        if moved:
            self.group.registry.save(self)


class Group:
    def __init__(self, registry: GroupRegistry, vhost: str, name: str,
                 partitions: list[StreamQueue], spec: StartSpec,
                 super_stream: str | None) -> None:
        self.registry = registry
        self.vhost = vhost
        self.name = name
        self.spec = spec
        # deliveries of a super stream name their partition
        self.super_stream = super_stream
        self.members: list[Consumer] = []
        self.states = [
            PartitionState(self, p, registry.load(vhost, name, p.name)) for p in partitions
        ]
        for state in self.states:
            state.partition.group_states.append(state)

    def rebalance(self) -> None:
        members = self.members
        for i, state in enumerate(self.states):
            owner = members[i % len(members)] if members else None
            if owner is not state.owner:
                state.start(owner, self.spec)
                state.partition.on_ready(state.partition)


class GroupRegistry:
    """Every group of the broker, and the members' way back to them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.groups: dict[tuple[str, str, tuple[str, ...]], Group] = {}
        self.member_of: dict[Consumer, Group] = {}
        self.on_saved: Callable[[], None] = lambda: None

    def load(self, vhost: str, group: str, partition: str) -> int | None:
        key = offset_key(vhost, group, partition)
        for found, record in self.store.definitions(KIND):
            if found == key:
                return int(record["offset"])
        return None

    def save(self, state: PartitionState) -> None:
        group = state.group
        self.store.put_definition(
            KIND,
            offset_key(group.vhost, group.name, state.partition.name),
            {"vhost": group.vhost, "group": group.name,
             "stream": state.partition.name, "offset": state.committed},
        )
        self.on_saved()

    def join(self, consumer: Consumer, vhost: str, name: str,
             partitions: list[StreamQueue], spec: StartSpec,
             super_stream: str | None = None) -> None:
        key = (vhost, name, tuple(p.name for p in partitions))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(self, vhost, name, partitions, spec, super_stream)
        group.members.append(consumer)
        self.member_of[consumer] = group
        for state in group.states:
            state.partition.consumers.append(consumer)
        group.rebalance()

    def leave(self, consumer: Consumer) -> None:
        group = self.member_of.pop(consumer, None)
        if group is None:
            return
        group.members.remove(consumer)
        for state in group.states:
            if consumer in state.partition.consumers:
                state.partition.consumers.remove(consumer)
        group.rebalance()

    def reset(self, vhost: str, name: str, stream: str, offset: int) -> None:
        """Set a group's committed offset (only while it has no member)."""
        for group in self.groups.values():
            if group.vhost == vhost and group.name == name and group.members:
                if any(s.partition.name == stream for s in group.states):
                    raise ValueError(f"group '{name}' has live members")
        self.store.put_definition(
            KIND, offset_key(vhost, name, stream),
            {"vhost": vhost, "group": name, "stream": stream, "offset": offset},
        )
        for group in self.groups.values():
            for state in group.states:
                if group.vhost == vhost and group.name == name and state.partition.name == stream:
                    state.committed = offset
        self.on_saved()

    def records(self) -> list[dict[str, Any]]:
        return [dict(record) for _, record in self.store.definitions(KIND)]

    def owner_of(self, vhost: str, name: str, stream: str) -> Consumer | None:
        for group in self.groups.values():
            for state in group.states:
                if group.vhost == vhost and group.name == name and state.partition.name == stream:
                    return state.owner
        return None

    def forget_partition(self, partition: StreamQueue) -> None:
        """A partition stream was deleted: groups reading it end."""
        for key, group in list(self.groups.items()):
            if any(s.partition is partition for s in group.states):
                for member in group.members:
                    self.member_of.pop(member, None)
                del self.groups[key]
        for found, record in list(self.store.definitions(KIND)):
            if record.get("vhost") == partition.vhost and record.get("stream") == partition.name:
                self.store.delete_definition(KIND, found)
