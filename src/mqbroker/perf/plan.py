"""A perf run's plan: the topology and the load the arguments ask for
(queues, exchange, producers, consumers, rates, sizes), decided once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

QUEUE_PREFIX = "perf-q-"

QUEUE_PREFIX = "perf-q-"




@dataclass
class Plan:
    args: argparse.Namespace
    exchange: str
    exchange_type: str
    queues: list[str]
    bindings: list[tuple[str, str]]  # (queue, key)
    producer_keys: list[list[str]]
    consumer_queues: list[list[tuple[int, str]]]
    fanout: bool
    producer_counts: list[int] = field(default_factory=list)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.fanout_queues:
        args.exchange_type = "fanout"
        args.queues = args.fanout_queues
    nq = max(1, args.queues)
    P = max(0, args.producers)
    C = max(0, args.consumers)
    queues = [f"{QUEUE_PREFIX}{i:03d}" for i in range(nq)]
    etype = args.exchange_type
    exchange = f"perf.{etype}" + (".durable" if args.persistent else "")
    bindings: list[tuple[str, str]] = []
    keys_for: list[list[str]] = []
    if etype == "direct":
        bindings = [(q, q) for q in queues]
        for p in range(P):
            own = [q for i, q in enumerate(queues) if i % P == p] if nq >= P \
                else [queues[p % nq]]
            keys_for.append(own)
    elif etype == "fanout":
        bindings = [(q, "") for q in queues]
        keys_for = [[""] for _ in range(P)]
    else:
        nb = max(1, args.topic_bindings)
        bindings = [(queues[i % nq], f"perf.t{i:03d}.*") for i in range(nb)]
        for p in range(P):
            idx = [i for i in range(nb) if i % P == p] if nb >= P \
                else [p % nb]
            keys_for.append([f"perf.t{i:03d}.x" for i in idx])
    consumer_queues: list[list[tuple[int, str]]] = []
    for c in range(C):
        if C >= nq:
            consumer_queues.append([(c % nq, queues[c % nq])])
        else:
            consumer_queues.append([(i, q) for i, q in enumerate(queues)
                                    if i % C == c])
    counts: list[int] = []
    if args.backlog and P:
        base, extra = divmod(args.backlog, P)
        counts = [base + (1 if p < extra else 0) for p in range(P)]
    return Plan(args, exchange, etype, queues, bindings, keys_for,
                consumer_queues, etype == "fanout", counts)


# --------------------------------------------------------------------------
