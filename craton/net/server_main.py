"""``craton-server``: the production node, configured by ``VDB_*`` environment variables.

Start-up: read and check the configuration (``craton.net.config``), raise the open-files
limit and clamp ``VDB_MAX_CONNECTIONS`` to what it can hold (``craton.net.descriptors``; one
``server.max_connections_clamped`` warning when it must), lock and open the data directory,
listen on the main and metrics ports (so probes answer while the log is being recovered:
``/ready`` says ``unhealthy`` until it is), recover, serve. ``SIGTERM`` or
``SIGINT`` starts a graceful shutdown: stop accepting, answer what is in flight, let the
replica commit what it was given, close; bounded by ``SHUTDOWN_GRACE_S``.

Replication modes: ``single-node`` runs a one-replica VSR cluster — the same ``Replica``,
``Log``, ``EventStore`` and ``Driver`` as the simulator and as a cluster member. ``none``
runs that same one-replica path (there are no peers, so no replication message is ever
sent); its data directory is the same format. ``cluster`` runs replica ``VDB_REPLICA_ID``
of the cluster ``VDB_CLUSTER_PEERS`` lists, talking to its peers on their main ports
(``craton.net.peers``); with TLS configured, it connects to them over TLS and trusts the
certificate chain in ``VDB_TLS_CERT``. ``server.ready`` is logged once the log is recovered
and, in a cluster, a primary is known.

Exit statuses: 0 after a clean shutdown; 1 when the node cannot start (data directory
locked or damaged, an address that cannot be bound, TLS files that do not load) or stopped
after a fault, or when the shutdown grace ran out; 2 for an invalid configuration. Every
failure prints one line on standard error naming what is wrong, never a traceback; the
structured log (JSON lines on standard error) records the same. ``--help`` lists every
variable with its default (``craton.net.config.VARIABLES``) and ``--version`` prints the
version; both exit 0 without reading the environment. The node takes no other arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import ssl
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from craton import __version__
from craton.console import OneLineParser
from craton.core.auth import AuthMode
from craton.io.clock import SYSTEM_CLOCK, Clock
from craton.net.config import (
    VARIABLES,
    ConfigError,
    ReplicationMode,
    ServerConfig,
    load_config,
)
from craton.net.logs import EventLog, route_python_logging

if TYPE_CHECKING:
    from craton.net.peers import ClusterSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
SHUTDOWN_GRACE_S = 10.0


class StartError(Exception):
    """The node could not start; the message is the one line the operator sees."""


MALLOC_MMAP_THRESHOLD_BYTES = 1 << 20  # blocks this large are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _return_large_blocks_to_the_system() -> None:
    """Have glibc's malloc map every block of ``MALLOC_MMAP_THRESHOLD_BYTES`` or more, so
    that freeing one returns it to the system. Left alone, malloc raises that threshold to
    the largest block freed so far, and the parts of checkpoint states (megabytes each,
    made and dropped all the time) end up in the heap, which keeps them after they are
    freed. Nothing happens on a C library without ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)  # --help and --version exit here; the rest is the environment
    try:
        config = load_config(os.environ)
    except ConfigError as error:
        print(f"craton-server: {error}", file=sys.stderr)
        return EXIT_CONFIG
    clock = SYSTEM_CLOCK  # the one clock of the process: logs, host, peers, connections
    log = EventLog(config.log_level, clock=clock)
    _return_large_blocks_to_the_system()
    try:
        return asyncio.run(serve(config, log, clock))
    except StartError as error:
        log.error("server.start_failed", reason=str(error))
        print(f"craton-server: {error}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="craton-server",
        description="Run a Craton node, configured by the VDB_* environment variables below\n"
        "(an empty value counts as unset; docs/DEPLOYMENT.md has the details).",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"craton {__version__}")
    return parser


def variables_help() -> str:
    """The table of ``VDB_*`` variables: name, default, what it does; one line each."""
    name_width = max(len(variable.name) for variable in VARIABLES)
    default_width = max(len(variable.default) for variable in VARIABLES)
    lines = [f"{'variable':<{name_width}}  {'default':<{default_width}}  description"]
    for variable in VARIABLES:
        lines.append(
            f"{variable.name:<{name_width}}  {variable.default:<{default_width}}  "
            f"{variable.description}"
        )
    return "environment:\n" + "\n".join(f"  {line}" for line in lines)


async def serve(config: ServerConfig, log: EventLog, clock: Clock) -> int:
    """Run the node until a signal or a fault; returns the exit status."""
    # Imported here so that a bad configuration is reported before the node's heavier
    # modules (aiohttp, prometheus-client, the core) are loaded.
    from prometheus_client import disable_created_metrics

    from craton.net.descriptors import DescriptorError, plan_descriptors
    from craton.net.metrics import NodeMetrics
    from craton.net.node import HostError, ReplicaHost
    from craton.net.server import ListenError, Server

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created twin series
    route_python_logging(log)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: _unhandled(log, context))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = NodeMetrics()
    cluster = _cluster_settings(config)
    host = ReplicaHost(
        config.data_dir,
        log,
        metrics,
        cluster=cluster,
        on_halt=lambda _reason: stop.set(),
        clock=clock,
    )
    log.info("server.starting", version=__version__, **config.summary())
    try:
        plan = plan_descriptors(
            config.max_connections, config.data_dir, peers=len(config.cluster_peers)
        )
    except DescriptorError as error:
        raise StartError(str(error)) from None
    log.info(
        "server.open_files",
        limit=plan.limit_fds,
        raised_from=plan.raised_from_fds,
        reserve=plan.reserve_fds,
        max_connections=plan.max_connections,
    )
    if plan.clamped:
        log.warn(
            "server.max_connections_clamped",
            asked=plan.asked_connections,
            max_connections=plan.max_connections,
            open_files_limit=plan.limit_fds,
            note=f"VDB_MAX_CONNECTIONS={plan.asked_connections} needs an open-files limit of "
            f"at least {plan.needed_fds(plan.asked_connections)}; raise the hard limit "
            "(systemd LimitNOFILE=, Docker/Compose ulimits nofile, ulimit -n; "
            "docs/DEPLOYMENT.md)",
        )
        config = attrs.evolve(config, max_connections=plan.max_connections)
    if config.replication_mode is ReplicationMode.NONE:
        log.info(
            "server.replication_none",
            note="one replica and no peers: no replication protocol runs; the log and "
            "event store are those of single-node mode",
        )
    if config.auth_mode is AuthMode.NONE:
        log.warn(
            "server.auth_none",
            note="VDB_AUTH_MODE=none: no client is authenticated; every client is the owner "
            "of one default tenant (0). Set jwt, apikey or both to separate tenants",
        )
    server = Server(config, host, metrics, log, clock=clock)
    try:
        await server.start()  # before recovery: probes answer (not ready) meanwhile
    except ListenError as error:
        raise StartError(str(error)) from None
    try:
        host.open()
    except HostError as error:
        await server.shutdown(0.0)
        raise StartError(str(error)) from None
    await _first_of(host.wait_ready(), stop.wait())
    if host.halted is not None:
        await server.shutdown(0.0)
        raise StartError(f"data directory {config.data_dir}: {host.halted}")
    if host.became_ready:  # (not if the stop came first)
        log.info("server.ready", commit=host.commit, view=host.view, status=host.status)
    await stop.wait()
    log.info("server.stopping", grace_s=SHUTDOWN_GRACE_S)
    clean = await server.shutdown(SHUTDOWN_GRACE_S)
    if host.halted is not None:
        print(f"craton-server: stopped after a fault: {host.halted}", file=sys.stderr)
        return EXIT_FAILED
    if not clean:
        log.error("server.stopped", clean=False, reason="shutdown grace ran out")
        return EXIT_FAILED
    log.info("server.stopped", clean=True, commit=host.commit)
    return EXIT_OK


def _cluster_settings(config: ServerConfig) -> ClusterSettings | None:
    """This node's place in the cluster (None unless in cluster mode); ``StartError`` when
    the TLS files cannot serve as the trust for peer connections."""
    from craton.net.peers import ClusterSettings

    if config.replication_mode is not ReplicationMode.CLUSTER:
        return None
    tls = None
    if config.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        # A cluster may share one certificate, or list its CA in the same file: a trusted
        # certificate need not be self-signed or a root.
        tls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        try:
            tls.load_verify_locations(cafile=str(config.tls_cert))
            assert config.tls_key is not None
            tls.load_cert_chain(config.tls_cert, config.tls_key)  # shown to the peer (mTLS)
        except (OSError, ssl.SSLError) as error:
            raise StartError(
                f"VDB_TLS_CERT: cannot trust it for replica connections: {error}"
            ) from None
    assert config.cluster_secret is not None, "the configuration requires it in a cluster"
    return ClusterSettings(
        config.replica_id,
        config.cluster_peers,
        config.cluster_secret,
        tls,
        secondary=config.cluster_secret_secondary,
        formed=config.cluster_formed,
    )


def _unhandled(log: EventLog, context: dict[str, Any]) -> None:
    """An exception nothing caught: one JSON line (type and message), never a traceback."""
    error = context.get("exception")
    fields: dict[str, str | int | float | bool | None] = {
        "message": str(context.get("message", ""))
    }
    if error is not None:
        fields["error"] = f"{type(error).__name__}: {error}"
    log.emit(logging.ERROR, "server.unhandled_error", fields)


async def _first_of(*waits: Coroutine[Any, Any, object]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


if __name__ == "__main__":
    sys.exit(main())
