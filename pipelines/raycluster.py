"""Which Ray a driver runs on, chosen explicitly, and a fast failure when it does not answer.

The one implementation of this rule: the ingest (``pipelines.ingest``) and the Ray Train jobs
(``ray_jobs.cluster.init_ray``, which only turns :class:`RayAddressError` into its ``ConfigError``) both use it.

``ray.init()`` without an address joins "the current cluster": the address Ray wrote into its address file
(``/tmp/ray/ray_current_cluster``) at the last ``ray start``, or any GCS process it finds. A cluster that
died uncleanly leaves that file behind, and ``ray.init()`` then waits for the dead cluster, silently, for
many minutes. So a driver here never lets Ray guess:

* no address given -> a fresh local Ray of its own (``address="local"``), whatever files lie around;
* ``--address`` (first) or ``RAY_ADDRESS`` (which ``ray job submit`` sets for the driver it starts) ->
  exactly that cluster: ``host:port`` of its GCS (6379 after ``ray start --head``), ``ray://host:port`` for
  a Ray client server, or ``auto`` (the address file, read and checked here). The address is checked with a
  plain TCP connect (:data:`PROBE_TIMEOUT_S`) before ``ray.init``, so a dead cluster fails in seconds with
  one line. An ``http(s)://`` address is the dashboard's (its Jobs API), which only ``ray job submit``
  takes: it is rejected with that hint.
* The probe dials the host ``ray.init`` will dial (:func:`dialed_host`): on Linux Ray replaces a loopback GCS
  host (127.0.0.1, localhost, ::1) with the machine's node IP, so a hand-typed ``RAY_ADDRESS=127.0.0.1:6379``
  of a cluster that listens on loopback only fails here, with what to set, instead of hanging in ``ray.init``.

``--num-cpus`` sizes a local Ray only; when attaching to a cluster it is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import ray
import ray._private.services as ray_services

__all__ = ["LOCAL", "AUTO", "ENV", "PROBE_TIMEOUT_S", "RayAddressError", "RayTarget", "split_host_port",
           "check_address", "choose_address", "recorded_address", "resolve_address", "dialed_host", "probe",
           "connect_address", "init_ray"]

log = logging.getLogger(__name__)

LOCAL = "local"
AUTO = "auto"
ENV = "RAY_ADDRESS"
PROBE_TIMEOUT_S = 5.0
"""Seconds the TCP probe waits: enough for two lost SYNs (Linux resends after 1 s and 3 s), short enough
that a dead address fails within seconds."""
LOOPBACK_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's multi-node switch (``ray_constants.ENABLE_RAY_CLUSTER``); ``0`` keeps a loopback node / GCS address."""


class RayAddressError(ValueError):
    """An address that is malformed or does not answer (message: one line)."""


@dataclass(frozen=True)
class RayTarget:
    address: str
    """``"local"`` (start a Ray of our own), ``"auto"``, ``host:port`` or ``ray://host:port``."""
    source: str
    """Where it came from: ``"default"``, ``"--address"`` or ``"RAY_ADDRESS"``."""

    @property
    def local(self) -> bool:
        return self.address == LOCAL


def _where(address: str, source: str) -> str:
    """How a message names a given address: ``--address 'x'``, ``RAY_ADDRESS='x'`` or ``'x'``."""
    if not source:
        return repr(address)
    return f"{source} {address!r}" if source == "--address" else f"{source}={address!r}"


def _fallback(source: str) -> str:
    return f"unset {ENV}" if source == ENV else "drop --address"


def _is_client(address: str) -> bool:
    return address.lower().startswith("ray://")


def _host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); ValueError if it is not that."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or "/" in host:
        raise ValueError(address)
    return host, int(port)


def check_address(address: str, source: str) -> None:
    """Raise :class:`RayAddressError` for an address a driver cannot use (``source``: ``"--address"``,
    ``"RAY_ADDRESS"`` or ``""`` where the caller names it)."""
    if address in (LOCAL, AUTO):
        return
    where = _where(address, source)
    low = address.lower()
    if low.startswith(("http://", "https://")):
        try:
            host = urlsplit(address).hostname or "127.0.0.1"
        except ValueError:
            host = "127.0.0.1"
        raise RayAddressError(f"{where} is an HTTP address, the Ray dashboard's (its Jobs API), which only `ray job "
                              "submit` takes; a driver needs the cluster's GCS address host:port (`ray start --head` "
                              f"prints it, port 6379 by default, e.g. {_host_port_text(host, 6379)}) or "
                              "ray://host:10001")
    rest = address[len("ray://"):] if _is_client(address) else address
    if "://" in rest:
        raise RayAddressError(f"{where}: unsupported scheme; use host:port (the GCS), ray://host:port or auto")
    try:
        split_host_port(rest)
    except ValueError:
        raise RayAddressError(f"{where} is not host:port (e.g. 127.0.0.1:6379), ray://host:port, auto or "
                              "local") from None


def choose_address(flag: str | None, environ: Mapping[str, str] | None = None) -> RayTarget:
    """The Ray to use: ``--address``, else ``RAY_ADDRESS``, else a local Ray of our own (never Ray's
    address file implicitly). Raises :class:`RayAddressError` for an unusable address."""
    environ = os.environ if environ is None else environ
    if flag is not None and flag.strip():
        target = RayTarget(flag.strip(), "--address")
    elif environ.get(ENV, "").strip():
        target = RayTarget(environ[ENV].strip(), ENV)
    else:
        return RayTarget(LOCAL, "default")
    check_address(target.address, target.source)
    return target


def recorded_address() -> str | None:
    """The address Ray's last ``ray start`` on this machine recorded (its address file, below
    ``RAY_TMPDIR`` if set), if any."""
    try:
        return ray_services.find_bootstrap_address(None)
    except Exception:
        return None


def resolve_address(target: RayTarget) -> tuple[str, str, int]:
    """(what to pass to ``ray.init``, host, port) of a non-local target, without connecting: ``auto`` is
    replaced by the address Ray's address file records (:func:`recorded_address`)."""
    address = target.address
    if address == AUTO:
        where = _where(AUTO, target.source)
        found = recorded_address()
        if not found:
            raise RayAddressError(f"{where} but no running Ray cluster is recorded on this machine (Ray's address "
                                  f"file); start one (`ray start --head`), give its address, or "
                                  f"{_fallback(target.source)} to run on a local Ray")
        try:
            host, port = split_host_port(found)
        except ValueError:
            raise RayAddressError(f"{where}: Ray's address file records {found!r}, which is not host:port; give the "
                                  f"cluster's address, or {_fallback(target.source)} to run on a local Ray") from None
        return found, host, port
    check_address(address, target.source)
    host, port = split_host_port(address[len("ray://"):] if _is_client(address) else address)
    return address, host, port


def dialed_host(host: str) -> str:
    """The host ``ray.init`` connects to for a GCS address on ``host``: Ray (on Linux, where its multi-node
    clusters are on) replaces a loopback host -- 127.0.0.1, localhost, ::1 -- with this machine's node IP
    (``ray._private.services.resolve_ip_for_localhost``), and a cluster that listens on loopback only does
    not answer there. ``host`` itself where Ray keeps it, or where that function is missing or fails.
    (A ``ray://`` address is dialed as given.)"""
    resolve = getattr(ray_services, "resolve_ip_for_localhost", None)
    if not callable(resolve):
        return host
    try:
        resolved = resolve(host)
    except Exception:
        return host
    return resolved if isinstance(resolved, str) and resolved else host


def probe(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if something accepts TCP connections at host:port within ``timeout_s``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"no answer within {timeout_s:g} s"
    except OSError as e:
        return e.strerror or str(e)


def connect_address(target: RayTarget, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The address to pass to ``ray.init`` for a non-local target, after checking that the host ``ray.init``
    will dial answers; raises :class:`RayAddressError` (one line) within about ``timeout_s`` otherwise."""
    address, host, port = resolve_address(target)
    dial = host if _is_client(address) else dialed_host(host)
    why = probe(dial, port, timeout_s)
    if why is None:
        return address
    what = target.source
    if target.address == AUTO:
        what = f"{_where(AUTO, target.source)}: the address Ray recorded at its last `ray start`, in its address file"
    fallback = _fallback(target.source)
    if dial != host and probe(host, port, timeout_s) is None:
        raise RayAddressError(f"the Ray cluster at {address} ({what}) does not answer at "
                              f"{_host_port_text(dial, port)}, which ray.init dials for a loopback host on Linux: "
                              f"{why}; it listens on {host} only (like a cluster started with {LOOPBACK_ONLY_VAR}=0, "
                              f"as the local stack's is): set {LOOPBACK_ONLY_VAR}=0 for this driver too (`source "
                              f".stack/env` does), or {fallback} to run on a local Ray")
    raise RayAddressError(f"the Ray cluster at {address} ({what}) does not answer: {why}; start it (`ray start "
                          f"--head`), fix the address, or {fallback} to run on a local Ray")


def init_ray(target: RayTarget, num_cpus: int | None = None, *, warn: Callable[[str], None] | None = None,
             timeout_s: float = PROBE_TIMEOUT_S, include_dashboard: bool | None = False, **kwargs: Any) -> None:
    """Start a local Ray (``num_cpus``, ``include_dashboard``: ``None`` lets Ray decide) or join ``target``
    after :func:`connect_address`; ``kwargs`` go to ``ray.init`` either way. A no-op when this process
    already runs Ray."""
    if ray.is_initialized():
        return
    if target.local:
        ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)
        return
    address = connect_address(target, timeout_s)
    if num_cpus is not None and warn is not None:
        warn(f"--num-cpus {num_cpus} ignored: attaching to the Ray cluster at {address} ({target.source}), "
             "which has its own CPUs")
    log.info("connecting to the Ray cluster at %s (%s)", address, target.source)
    ray.init(address=address, **kwargs)
