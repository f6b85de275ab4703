"""The load generator (``mqbroker-perf``) and the benchmark (``make bench``)
of issue 7: PerfTest-style measurements against mqbroker and RabbitMQ.

- ``cli``: ``mqbroker-perf``, the orchestrator (topology, start, drain,
  accounting, one JSON line);
- ``workers``: producer and consumer processes with lean hot loops;
- ``frames``: pre-encoded publish/ack frames and the deliver parser;
- ``client``: a small blocking AMQP client (pamqp for rare methods);
- ``nullserver``: a null AMQP server, the generator's yardstick;
- ``bench``: the fixed scenario set, mqbroker vs RabbitMQ ratios.
"""
