"""``mqbroker serve``: the broker's command line."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path

import trio

from mqbroker import __version__
from mqbroker.config import MAX_MESSAGE_SIZE_LIMIT, Config
from mqbroker.log import configure, get_logger
from mqbroker.persistence.errors import StoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqbroker", description="AMQP 0-9-1 broker")
    parser.add_argument("--version", action="version", version=f"mqbroker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="AMQP port (default 5672; 0 = any free port)")
    serve.add_argument("--data-dir", type=Path, help="LMDB data directory (default ./data)")
    serve.add_argument(
        "--storage", choices=("lmdb", "memory"), help="storage backend (default lmdb)"
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--log-format", choices=("console", "json"))
    serve.add_argument("--management-port", type=int, help="HTTP management port (default 15672)")
    serve.add_argument("--no-management", action="store_true", help="do not start the HTTP API")
    serve.add_argument(
        "--port-file", type=Path, help="write the bound AMQP port here once listening"
    )
    tls = serve.add_argument_group("TLS (amqps listener, started when cert and key are set)")
    tls.add_argument("--tls-port", type=int, help="amqps port (default 5671; 0 = any)")
    tls.add_argument("--tls-certfile", type=Path, help="server certificate chain (PEM)")
    tls.add_argument("--tls-keyfile", type=Path, help="server private key (PEM)")
    tls.add_argument("--tls-cafile", type=Path, help="CA bundle for client certificates")
    tls.add_argument(
        "--tls-verify-peer", action="store_true", default=None,
        help="verify client certificates when sent (enables SASL EXTERNAL)",
    )
    tls.add_argument(
        "--tls-fail-if-no-peer-cert", action="store_true", default=None,
        help="refuse TLS clients without a certificate (mutual TLS)",
    )
    tls.add_argument(
        "--management-tls", action="store_true", default=None,
        help="serve the management API over HTTPS with the TLS cert/key",
    )
    serve.add_argument(
        "--connection-max", type=int, help="node-wide connection limit (default none)"
    )
    serve.add_argument(
        "--max-message-size",
        type=_message_size,
        help="largest message body in bytes (default 134217728 = 128 MiB; at most 512 MiB)",
    )
    cluster = serve.add_argument_group("clustering (docs/clustering.md)")
    cluster.add_argument("--node-name", help="this node's name in the cluster")
    cluster.add_argument(
        "--cluster-etcd", metavar="URL[,URL...]",
        help="etcd endpoints (http://host:port); joins the cluster",
    )
    cluster.add_argument("--cluster-port", type=int, help="replication port (default 25672)")
    cluster.add_argument("--cluster-size", type=int, help="nodes in the cluster (default 3)")
    cluster.add_argument("--cluster-secret", help="shared secret of the replication links")
    cluster.add_argument("--cluster-prefix", help="etcd key prefix (default mqbroker/)")
    cluster.add_argument(
        "--cluster-lease-ttl", type=int, help="leader lease in seconds (default 5)"
    )
    cluster.add_argument(
        "--cluster-advertise-host", help="address other nodes reach this one at"
    )
    return parser


def _message_size(text: str) -> int:
    """RabbitMQ caps max_message_size at 512 MiB (its frames' limit)."""
    value = int(text)
    if not 1 <= value <= MAX_MESSAGE_SIZE_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_MESSAGE_SIZE_LIMIT}")
    return value


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config.from_toml(args.config) if args.config else Config(management_port=15672)
    config = config.with_overrides(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        storage=args.storage,
        log_level=args.log_level,
        log_format=args.log_format,
        management_port=args.management_port,
        tls_port=args.tls_port,
        tls_certfile=args.tls_certfile,
        tls_keyfile=args.tls_keyfile,
        tls_cafile=args.tls_cafile,
        tls_verify_peer=args.tls_verify_peer,
        tls_fail_if_no_peer_cert=args.tls_fail_if_no_peer_cert,
        connection_max=args.connection_max,
        max_message_size=args.max_message_size,
        management_tls=args.management_tls,
        node_name=args.node_name,
        cluster_etcd=args.cluster_etcd,
        cluster_port=args.cluster_port,
        cluster_size=args.cluster_size,
        cluster_secret=args.cluster_secret,
        cluster_prefix=args.cluster_prefix,
        cluster_lease_ttl_s=args.cluster_lease_ttl,
        cluster_advertise_host=args.cluster_advertise_host,
    )
    if args.no_management:
        from dataclasses import replace

        config = replace(config, management_port=None)
    return config


async def _serve(config: Config, port_file: Path | None) -> None:
    from mqbroker.server.app import serve

    if config.cluster_etcd:
        from mqbroker.server.cluster_node import serve_node

        serve = serve_node  # type: ignore[assignment]

    # SIGTERM and SIGINT stop the broker cleanly: connections are closed and
    # the last write batch is committed before the process exits.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(serve, config)
            if port_file is not None:
                tmp = port_file.with_suffix(".tmp")
                tmp.write_text(f"{info.port}\n")
                os.replace(tmp, port_file)
            async for signum in signals:
                get_logger("mqbroker").info(
                    "broker.stopping", signal=signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


# CPython's default (700, 10, 10) runs a young-generation collection every
# 700 allocations and full ones often enough that a queue holding 100,000s
# of messages is re-scanned again and again; the broker allocates a few
# objects per message. Measured on the transient benchmark: about 8 % more
# throughput (docs/performance.md). Only the standalone broker does this:
# an embedded broker leaves its host's interpreter settings alone.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # start-up objects (modules, config) are never garbage


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    configure(config.log_level, config.log_format)
    log = get_logger("mqbroker")
    tune_gc()
    try:
        trio.run(_serve, config, args.port_file)
    except KeyboardInterrupt:
        log.info("broker.stopped", reason="interrupted")
    except OSError as exc:
        log.error("broker.failed", error=str(exc))
        return 1
    except StoreError as exc:
        log.error("broker.failed", error=str(exc))
        return 1
    except BaseExceptionGroup as group:
        store_errors, rest = group.split(StoreError)
        if store_errors is not None:
            for failure in store_errors.exceptions:
                log.error("broker.failed", error=str(failure))
            return 1
        exits, rest = group.split(SystemExit)
        if exits is not None and rest is None:
            # a cluster leader that lost its lease (server/cluster_node.py)
            log.error("broker.stopped", reason="leadership lost")
            code = exits.exceptions[0]
            return code.code if isinstance(code, SystemExit) and isinstance(code.code, int) else 3
        interrupted, rest = group.split(KeyboardInterrupt)
        if rest is not None:
            raise
        log.info("broker.stopped", reason="interrupted")
        return 0
    log.info("broker.stopped", reason="signal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
