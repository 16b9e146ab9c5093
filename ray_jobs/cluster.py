"""Which Ray cluster a job runs on, and whether that cluster can run it at all.

:func:`init_ray` connects the driver by the rule of :mod:`pipelines.raycluster`, which owns it (the ingest
follows the same one): ``--address`` (the entrypoints' command line hands it over with
:func:`use_cli_address`), else ``RAY_ADDRESS`` (which ``ray job submit`` sets for the driver it starts),
else a local Ray instance of the job's own -- never the cluster Ray's address file names. A given address
that does not answer a TCP probe, a dashboard URL and an ``auto`` without a recorded cluster are a
:class:`ConfigError`, one line, within seconds.

:func:`check_gpus`: a job that asks for GPUs on a cluster without enough of them fails at once
(Ray Train would retry the worker-group start-up every minute, forever), unless the cluster's
autoscaler can add GPU nodes (Ray's cluster config names an autoscalable node group with GPUs) or
``ANYSAT_WAIT_FOR_GPUS=1`` says that GPU nodes will come; then it logs that it is waiting for them.
"""

from __future__ import annotations

import logging
import os

import ray
import ray._private.state

from pipelines import raycluster
from ray_jobs.config import ConfigError

__all__ = ["use_cli_address", "init_ray", "check_gpus", "can_autoscale_gpus"]

log = logging.getLogger(__name__)

WAIT_FOR_GPUS_ENV = "ANYSAT_WAIT_FOR_GPUS"
_cli_address: str | None = None


def use_cli_address(address: str | None) -> None:
    """The ``--address`` of this process's command line (``None``: not given)."""
    global _cli_address
    _cli_address = address


def init_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect this driver to Ray: ``address`` (default: the command line's ``--address``), else
    ``RAY_ADDRESS``, else a local Ray instance (:func:`pipelines.raycluster.init_ray`); nothing to do when
    it already is. An unusable or unreachable address is a one-line :class:`ConfigError`."""
    if ray.is_initialized():
        return
    try:
        target = raycluster.choose_address(address or _cli_address)
        # include_dashboard=None: a job's local Ray keeps Ray's default (the dashboard, where installed)
        raycluster.init_ray(target, include_dashboard=None, log_to_driver=log_to_driver)
    except raycluster.RayAddressError as e:
        raise ConfigError(str(e)) from None


def can_autoscale_gpus() -> bool:
    """Whether the cluster's autoscaler can add nodes with GPUs (from the cluster config Ray's
    autoscaler publishes; a cluster without one cannot), or ``ANYSAT_WAIT_FOR_GPUS=1``."""
    if os.environ.get(WAIT_FOR_GPUS_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # no config published (plain `ray start`), or an older GCS
        return False
    if not config:
        return False
    return any(ngc.resources.get("GPU", 0) > 0 and ngc.max_count != 0
               and (ngc.max_count == -1 or ngc.max_count > ngc.min_count)
               for ngc in config.node_group_configs)


def check_gpus(needed: int, what: str) -> None:
    """Fail at once (one-line ConfigError) when ``needed`` GPUs exceed the cluster's and it cannot
    add GPU nodes; ``what`` says where the request comes from."""
    if needed <= 0:
        return
    have = int(ray.cluster_resources().get("GPU", 0))
    if have >= needed:
        return
    if can_autoscale_gpus():
        log.warning("%s asks for %d GPU(s) and the Ray cluster has %d now: waiting for the autoscaler to add GPU "
                    "nodes", what, needed, have)
        return
    raise ConfigError(f"{what} asks for {needed} GPU(s) but the Ray cluster has {have or 'none'} and cannot add GPU "
                      f"nodes; run on CPUs with --set use_gpu=false, or on a cluster with GPUs")
