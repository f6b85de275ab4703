"""Publisher confirms and tx commit-oks: the one place they are decided.

Strategy (RabbitMQ's ``rabbit_confirms``, plus the group commit): each
channel has a ``Confirms`` with the sequence numbers it handed out, in
order, each waiting for the store epoch that holds its writes (0 when it
wrote nothing durable); the ones that are safe at once are sent at the end
of the loop pass, so a burst read together gets one ack. ``ConfirmHub`` (one per broker) knows the
committed epoch and the channels that wait; after a commit it lets each of
them send one ``basic.ack(multiple=True)`` covering every sequence number
that became safe at once. A persistent message that was consumed and acked
on every queue it was written to is confirmed without waiting for its
commit (RabbitMQ confirms "when it is persisted to disk, or when it is
consumed on every queue"): the hub counts those entries per message id.
Confirms stay in order: an early one waits for every earlier publish.
A ``tx.commit`` waits on the same epochs, so its commit-ok is released
here too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

Send = Callable[[PamqpMethod], None]


class ConfirmHub:
    """Broker-wide: the committed epoch and who waits for a commit."""

    def __init__(self) -> None:
        # Everything up to ``committed_epoch`` is durable.
        self.committed_epoch = 0
        self.waiters: set[Confirms] = set()
        # channels with confirms that are safe now: flushed once per loop
        # pass (``flush_ready``), so a burst of publishes read together is
        # confirmed by one ``basic.ack(multiple=true)``, as RabbitMQ does
        self.ready: set[Confirms] = set()
        # msg id -> [confirms, publish seq, persisted entries not yet
        # consumed] for confirm-mode publishes still waiting for a commit
        self.early: dict[int, list[object]] = {}

    def on_committed(self, epoch: int) -> bool:
        """A commit finished; False when it was not news."""
        if epoch <= self.committed_epoch:
            return False
        self.committed_epoch = epoch
        for confirms in list(self.waiters):
            if confirms.flush(epoch):
                self.waiters.discard(confirms)
        return True

    def nack_waiting(self) -> None:
        """Writes failed: every publish still waiting for a commit is
        nacked (its message may yet be written: a nack means "not known to
        be safe", and the publisher decides whether to send it again)."""
        committed = self.committed_epoch
        for confirms in list(self.waiters):
            confirms.nack_after(committed)
        self.waiters.clear()
        self.early.clear()

    def flush_ready(self) -> None:
        """End of a loop pass: send the confirms that became safe in it."""
        ready, self.ready = self.ready, set()
        committed = self.committed_epoch
        for confirms in ready:
            if confirms.flush(committed):
                self.waiters.discard(confirms)

    def consumed(self, msg_id: int) -> None:
        """A persisted entry of ``msg_id`` was acked (or delivered with
        auto-ack); once every queue it was written to has done so, its
        confirm need not wait for the commit."""
        pending = self.early.get(msg_id)
        if pending is None:
            return
        remaining = pending[2]
        assert isinstance(remaining, int)
        if remaining > 1:
            pending[2] = remaining - 1
            return
        del self.early[msg_id]
        confirms, seq = pending[0], pending[1]
        assert isinstance(confirms, Confirms) and isinstance(seq, int)
        confirms.consumed(seq)


class Confirms:
    """One channel's publisher-confirm and tx-commit state."""

    __slots__ = (
        "hub",
        "send",
        "enabled",
        "next_seq",
        "pending",
        "consumed_seqs",
        "tx_epochs",
        "closed",
    )

    def __init__(self, hub: ConfirmHub, send: Send) -> None:
        self.hub = hub
        self.send = send
        self.enabled = False  # confirm.select was received
        self.next_seq = 1
        # (last publish seq, store epoch it waits for, msg id or 0, first
        # seq), in order; a run of publishes that wait for the same epoch
        # is one item (``add_run``)
        self.pending: deque[tuple[int, int, int, int]] = deque()
        # seqs consumed on every queue before their commit
        self.consumed_seqs: set[int] = set()
        # tx.commit-oks waiting for their epoch, in order
        self.tx_epochs: deque[int] = deque()
        self.closed = False

    def add(self, epoch: int, msg_id: int = 0, written: int = 0) -> int:
        """Register one publish; its sequence number. With ``msg_id`` and
        ``written`` (persisted entries) it may be confirmed early."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.pending.append((seq, epoch, msg_id, seq))
        hub = self.hub
        if epoch <= hub.committed_epoch:
            hub.ready.add(self)  # safe now: confirmed at the end of the pass
        else:
            hub.waiters.add(self)
            if msg_id and written:
                hub.early[msg_id] = [self, seq, written]
        return seq

    def add_run(self, epoch: int, count: int) -> None:
        """Register ``count`` publishes that all wait for ``epoch`` (a run
        whose entries cannot be confirmed early): one pending item."""
        first = self.next_seq
        self.next_seq = first + count
        self.pending.append((first + count - 1, epoch, 0, first))
        hub = self.hub
        if epoch <= hub.committed_epoch:
            hub.ready.add(self)
        else:
            hub.waiters.add(self)

    @property
    def unconfirmed(self) -> int:
        return sum(last - first + 1 for last, _, _, first in self.pending)

    def settle(self, refused: bool, durable: bool, epoch: int, msg_id: int, written: int) -> None:
        """One routed publish's confirm: nacked when a queue refused it,
        held for commit ``epoch`` when it was written durably, else safe
        now. The single- and run-publish paths both end here."""
        if refused:
            self.nack()
        elif durable:
            self.add(epoch, msg_id, written)
        else:
            self.add(0)

    def nack(self) -> int:
        """A publish that failed (e.g. reject-publish overflow)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.flush(self.hub.committed_epoch)
        self.send(commands.Basic.Nack(delivery_tag=seq, multiple=False, requeue=False))
        return seq

    def nack_after(self, committed: int) -> None:
        """Ack what is safe, nack every publish still waiting."""
        self.flush(committed)
        last = 0
        while self.pending:
            last = self.pending.popleft()[0]
        self.consumed_seqs.clear()
        if last and not self.closed:
            self.send(commands.Basic.Nack(delivery_tag=last, multiple=True, requeue=False))

    def consumed(self, seq: int) -> None:
        """Publish ``seq`` was consumed on every queue before its commit."""
        if self.closed:
            return
        self.consumed_seqs.add(seq)
        pending = self.pending
        if pending and pending[0][0] == seq and self.flush(self.hub.committed_epoch):
            self.hub.waiters.discard(self)

    def wait_tx(self, epoch: int) -> None:
        """A ``tx.commit`` whose writes belong to ``epoch``."""
        if epoch <= self.hub.committed_epoch and not self.tx_epochs:
            self.send(commands.Tx.CommitOk())
            return
        self.tx_epochs.append(epoch)
        self.hub.waiters.add(self)

    def flush(self, committed: int) -> bool:
        """Ack every pending seq whose epoch is durable; True when done."""
        pending = self.pending
        consumed = self.consumed_seqs
        early = self.hub.early
        last = first = 0
        while pending and (pending[0][1] <= committed or pending[0][0] in consumed):
            last, _, msg_id, start = pending.popleft()
            if not first:
                first = start
            if consumed:
                consumed.discard(last)
            if msg_id:
                early.pop(msg_id, None)
        if first and not self.closed:
            self.send(commands.Basic.Ack(delivery_tag=last, multiple=last > first))
        tx_epochs = self.tx_epochs
        while tx_epochs and tx_epochs[0] <= committed:
            tx_epochs.popleft()
            if not self.closed:
                self.send(commands.Tx.CommitOk())
        return not pending and not tx_epochs

    def close(self) -> None:
        """The channel is gone: nothing more is confirmed."""
        self.closed = True
        early = self.hub.early
        for _, _, msg_id, _ in self.pending:
            if msg_id:
                early.pop(msg_id, None)
        self.pending.clear()
        self.consumed_seqs.clear()
        self.tx_epochs.clear()
        self.hub.waiters.discard(self)
        self.hub.ready.discard(self)
