"""The super stream exchange: a partitioned stream's front door.

Strategy: RabbitMQ's super stream topology (partition streams ``NAME-0``
.. ``NAME-(N-1)`` bound with keys ``"0"``..``"N-1"`` and
``x-stream-partition-order``), with the partitioning done by the broker:
a message goes to partition ``(murmur3_x86_32(routing key, seed 104729) &
0x7FFFFFFF) % N``, the partition RabbitMQ's stream clients pick with their
hash strategy, so keys land where a RabbitMQ stream client would put them
and order holds per key. The partition streams themselves are created by
the command layer (``broker/commands.py``), which knows about queues.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import mmh3

from ..errors import PreconditionFailed
from .base import Destination, FieldTable
from .direct import DirectExchange
from .registry import register

SEED = 104729
# Retention arguments the exchange passes on to every partition stream.
PARTITION_ARGUMENTS = ("x-max-age", "x-max-length-bytes", "x-stream-max-segment-size-bytes")
MAX_PARTITIONS = 1024


def partition_of(routing_key: str, partitions: int) -> int:
    digest = mmh3.hash(routing_key.encode("utf-8"), SEED, signed=False)
    return (digest & 0x7FFFFFFF) % partitions


def partition_count(arguments: dict[str, Any]) -> int:
    value = arguments.get("x-partitions")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        raise PreconditionFailed(
            f"invalid arg 'x-partitions': an integer from 1 to {MAX_PARTITIONS} is required"
        )
    return value


@register
class SuperStreamExchange(DirectExchange):
    type_name: ClassVar[str] = "x-super-stream"

    def __init__(self, partitions: int = 1) -> None:
        super().__init__()
        self.partitions = partitions

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> SuperStreamExchange:
        return cls(partition_count(arguments))

    def route(self, routing_key: str, headers: FieldTable | None) -> Iterable[Destination]:
        return super().route(str(partition_of(routing_key, self.partitions)), headers)
