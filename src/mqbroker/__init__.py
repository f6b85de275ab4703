"""mqbroker: an AMQP 0-9-1 message broker written in Python.

The package is split so the protocol core (``protocol/``) and the broker
domain (``broker/``, ``exchanges/``, ``queues/``) never touch a socket or a
disk; ``server/`` is the only place trio lives and ``persistence/`` the only
place that knows about LMDB.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
