"""Run a broker in a background thread: for tests and for embedding.

``with EmbeddedBroker(config) as b: b.port`` starts a trio loop in a thread,
waits until the listener is bound, and on exit cancels the loop and joins
the thread, so a test never leaks a broker.
"""

from __future__ import annotations

import threading
from types import TracebackType

import trio

from mqbroker.config import Config
from mqbroker.server.app import ServerInfo, serve


class EmbeddedBroker:
    def __init__(self, config: Config, *, start_timeout_s: float = 30.0) -> None:
        self.config = config
        self.start_timeout_s = start_timeout_s
        self.info: ServerInfo | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mqbroker", daemon=True)

    @property
    def port(self) -> int:
        assert self.info is not None
        return self.info.port

    @property
    def management_port(self) -> int | None:
        return self.info.management_port if self.info else None

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self.info = await nursery.start(serve, self.config)
                    self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> EmbeddedBroker:
        self._thread.start()
        self._ready.wait(self.start_timeout_s)
        if self._error is not None:
            raise RuntimeError("embedded broker failed to start") from self._error
        if self.info is None:
            raise RuntimeError("embedded broker did not start in time")
        return self

    def stop(self) -> None:
        if self._token is not None and self._scope is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
