"""Joining a Ray cluster for `--ray` (ingest, training, evaluation): a named cluster, RAY_ADDRESS, or a local Ray.

Why a reachability check before `ray.init`: Ray waits a long time for a head node that is not
there, and a user who mistyped an address should hear so within seconds, before anything changes.
"""

from __future__ import annotations

import logging
import os
import socket

from .errors import ConfigError

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "--ray needs Ray: pip install 'ragtune[ray]'"


def resolve_address(address: str | None) -> str | None:
    """--ray-address, else RAY_ADDRESS, else None (a local Ray is started)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a ConfigError naming the address unless its head node accepts a TCP connection."""
    target = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in target:
        return  # Ray's own ways to find a cluster: it reports those itself
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: no Ray head node answers there ({exc}); start one with "
                          "`ray start --head`, or fix the address (or RAY_ADDRESS)") from None


def connect(address: str | None = None, workers: int = 2, *, worker_logs: bool = False) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local Ray with `workers` CPUs.
    `worker_logs`: show the workers' output here (training's progress lines). A process that is already
    connected stays connected."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use at least 1")
    if ray.is_initialized():
        return
    address = resolve_address(address)
    if address:
        check_reachable(address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
    ray.init(**kwargs, logging_level=logging.WARNING, log_to_driver=worker_logs, configure_logging=False)
    logger.info("Ray: %s, %s CPUs", address or "local", ray.cluster_resources().get("CPU"))
