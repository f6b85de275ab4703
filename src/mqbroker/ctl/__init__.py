"""``mqbrokerctl``: operate a running mqbroker (or RabbitMQ) through its
HTTP management API; a client only, it imports nothing of the broker.

Modules: ``api`` (HTTP client), ``output`` (tables, JSON), ``app`` (root
options, overview, list), ``topology``, ``messages``, ``moves``,
``admin``, ``streams``; ``amqp`` + ``deaths`` for the ``--amqp`` mode;
``cli`` is the entry point.
"""
