"""What every suite shares to talk to a broker, one copy of each:

- ``raw``: the one hand-driven AMQP client (``RawClient``, ``Closed``,
  ``close_code``), for malformed input, exact frame orders and handshakes;
- ``frames``: frame builders (pamqp-built, or malformed on purpose), for
  sockets and for the sans-I/O ``ServerConnection`` alike;
- ``waits``: the one bounded polling loop (``wait_until`` answers,
  ``wait_for`` demands), optionally pumping a pika connection;
- ``blocking``: pika BlockingConnection parameters, teardown of names, and
  bounded basic.get / queue-depth loops;
- ``names``: unique queue and exchange names.

A suite's own helpers (``policy_support``, ``itest_support``,
``crash_support``, ``mgmt_support``, ``protocol_helpers``) keep only what
is that suite's alone. The package is importable as ``support`` from every
folder because pytest puts ``tests/`` (the root conftest's folder) on
``sys.path``. Every read and wait has a timeout: nothing here can hang a
test."""
