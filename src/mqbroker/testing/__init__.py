"""pytest plugin: a real mqbroker for your tests.

Usage (the plugin is registered through the ``pytest11`` entry point, so
installing mqbroker is enough)::

    def test_roundtrip(mqbroker):
        conn = pika.BlockingConnection(pika.URLParameters(mqbroker.url))

Fixtures:
- ``mqbroker``: a fresh broker per test, in-process (a trio loop in a
  thread), on a free port with a temporary data dir.
- ``mqbroker_session``: one broker for the whole session (cheaper).
- ``broker``: alias of ``mqbroker`` used by mqbroker's own suite.
- ``mqbroker_management``: like ``mqbroker`` plus the HTTP management API
  on a free port (``handle.management_port``, user guest/guest).

Set ``MQBROKER_EXTERNAL_URL=amqp://guest:guest@127.0.0.1:5672/%2F`` to run
the same tests against another broker (RabbitMQ, for differential runs);
the harness features below then skip the test with a reason.

The harness (in-process brokers)
--------------------------------
The slow and the broken paths, one line each, on the real broker::

    @pytest.mark.mqbroker(virtual_clock=True)
    def test_dlq_after_an_hour(mqbroker):
        ...publish with expiration "3600000"...
        mqbroker.clock.advance(3600)      # returns once every timer that
                                          # fell due fired and its effects
                                          # (dead-lettering, x-expires, delayed
                                          # releases, consumer timeouts) are
                                          # committed and sent
        assert [m.body for m in mqbroker.peek("dlq")] == [b"..."]

- ``@pytest.mark.mqbroker(virtual_clock=True, **config)``: the broker's
  time is ``mqbroker.clock`` (real time plus what ``advance`` added, so
  heartbeats and timestamps stay sane); other keywords are ``Config``
  fields (``consumer_timeout_ms=...``).
- ``mqbroker.peek(queue, vhost="/")``: the messages in order, unconsumed:
  ``.body``, ``.properties``, ``.headers``, ``.redelivered``,
  ``.routing_key`` (and ``.offset`` on a stream).
- ``mqbroker.faults.disconnect_all()``: every client connection drops
  without a close handshake.
- ``mqbroker.faults.crash()``: as a SIGKILL: nothing more is written,
  committed state recovers, the broker is back on the same URL.
- ``with mqbroker.faults.disk_alarm():`` / ``memory_alarm()``: publishers
  get ``connection.blocked`` until the block ends.
- ``with mqbroker.faults.fail_writes():`` storage writes fail: persistent
  publishes are ``basic.nack``ed, nothing acked before is lost, the broker
  keeps serving.
- ``mqbroker_process`` brokers (subprocesses) have ``.kill()`` and
  ``.restart()`` for real crashes; the other harness features need the
  in-process ``mqbroker`` fixture.

Broker subprocesses (crash and restart tests)
---------------------------------------------
``BrokerProcess`` runs ``python -m mqbroker serve`` as a child process on a
given data dir, so a test can SIGKILL it and start it again on the same
data::

    def test_survives_kill(mqbroker_process):
        broker = mqbroker_process()          # fresh data dir under tmp_path
        ...publish with confirms to broker.url...
        broker.kill()                        # SIGKILL, no clean-up at all
        broker.restart()                     # same data dir (same port if
                                             # started with reuse_port=True)
        ...consume from broker.url...

- ``mqbroker_process(data_dir=None, *, reuse_port=False, port=0,
  storage="lmdb", extra_args=(), start_timeout=30.0)`` starts a broker and
  returns its ``BrokerProcess``; every process it started is stopped at
  teardown (SIGTERM, then SIGKILL).
- ``.port``, ``.url``, ``.pid``, ``.data_dir``, ``.log_path``;
  ``.kill()`` (SIGKILL and reap), ``.terminate(timeout)`` (SIGTERM and
  wait), ``.restart(kill=False)``, ``.wait(timeout)`` (exit code),
  ``.log_text()``.
- The broker's stdout and stderr are appended, across restarts, to
  ``<data_dir>.log`` next to the data dir (``<data_dir>.port`` holds the
  port file), so a failing test can show what the broker said.
- ``reuse_port=True`` restarts on the port of the first start (clients can
  keep one URL); otherwise each start binds a free port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqbroker.testing.handle import BrokerHandle, start
from mqbroker.testing.process import BrokerProcess, BrokerStartError

__all__ = ["BrokerHandle", "BrokerProcess", "BrokerStartError"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mqbroker(virtual_clock=False, **config): options of the mqbroker "
        "fixture's broker (virtual_clock: mqbroker.clock.advance(); other "
        "keywords are mqbroker Config fields)",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, object]:
    marker = request.node.get_closest_marker("mqbroker")
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
def mqbroker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerHandle]:
    options = _options(request)
    virtual = bool(options.pop("virtual_clock", False))
    yield from start(tmp_path / "mqbroker-data", virtual_clock=virtual, **options)


@pytest.fixture
def broker(mqbroker: BrokerHandle) -> BrokerHandle:
    return mqbroker


@pytest.fixture
def mqbroker_management(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerHandle]:
    """Like ``mqbroker``, plus the HTTP management API (and ``/metrics``,
    the dashboard) on a free port: ``handle.management_port``."""
    options = _options(request)
    virtual = bool(options.pop("virtual_clock", False))
    yield from start(
        tmp_path / "mqbroker-data", virtual_clock=virtual, management_port=0, **options
    )


@pytest.fixture(scope="session")
def mqbroker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """One broker for the whole session (cheaper; tests share its state)."""
    yield from start(tmp_path_factory.mktemp("mqbroker-session"))


@pytest.fixture
def mqbroker_process(
    tmp_path: Path,
) -> Iterator[Callable[..., BrokerProcess]]:
    """Factory: ``mqbroker_process(data_dir=None, **kw)`` starts a broker
    subprocess (see ``BrokerProcess``); all are stopped at teardown."""
    started: list[BrokerProcess] = []

    def factory(data_dir: Path | None = None, **kw: object) -> BrokerProcess:
        if data_dir is None:
            data_dir = tmp_path / f"broker{len(started)}" / "data"
        proc = BrokerProcess(Path(data_dir), **kw)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield factory
    for proc in started:
        proc.terminate(timeout=5)
