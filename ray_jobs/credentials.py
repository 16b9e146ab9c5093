"""Credentials of the jobs: how they reach Ray workers, and how they are kept out of every output.

**Transport.** Ray writes a job's runtime environment, ``env_vars`` included, into its session logs
(``runtime_env_agent.log``, readable by anyone who can read ``/tmp/ray``). So no credential goes into
a runtime env. The driver writes the credentials of its own environment (:data:`SECRET_ENV`, and
``MLFLOW_TRACKING_URI`` when it carries ``user:password@``) to a file readable only by its user (mode
0600 in a private 0700 folder, in ``/dev/shm`` where there is one, so in memory rather than on disk)
and removes it when the job ends (:func:`secrets_file`); the runtime env carries only that file's
path (:data:`SECRETS_FILE_ENV`). Each worker process loads the file into its ``os.environ`` before it
touches MLflow or a store (:func:`load_secrets`: Ray Train workers in ``runtime.worker_context``, Ray
Data read tasks when they open a store).

On a multi-node cluster the file exists on the driver's node only. Workers elsewhere find no file and
use their own environment, which is where a cluster's credentials belong: a Kubernetes secret mounted
as environment variables in every Ray pod (``infra/``), an instance role, or the cluster launcher's
``worker_setup_commands``. Credentials given in a config (``storage_options``) travel inside the
pickled job arguments through Ray's object store, never through a log, and are never logged.

**Redaction.** :func:`redact` replaces ``scheme://user:password@`` in URLs and every known secret value
(the secret keys, session tokens and passwords of this process's environment, and those registered
with :func:`register_secrets`, e.g. a config's ``storage_options`` secret) by ``***``. Every printed URI
goes through it, and :class:`RedactingFilter` applies it to every log record of the entrypoints
(driver) and of the Ray Train workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Iterator

__all__ = ["SECRET_ENV", "PLAIN_ENV", "SECRETS_FILE_ENV", "SECRET_MARKERS", "is_secret", "redact",
           "register_secrets", "RedactingFilter", "install_redaction", "secrets_file", "worker_env",
           "load_secrets"]

log = logging.getLogger(__name__)

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""Environment variables that are credentials: forwarded to workers through the secrets file only."""
PLAIN_ENV = ("MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "ANYSAT_GIT_COMMIT")
"""Settings the workers need that are not credentials: forwarded in the runtime env (a tracking URI
with ``user:password@`` goes through the secrets file instead)."""
SECRETS_FILE_ENV = "ANYSAT_SECRETS_FILE"
SECRET_MARKERS = ("key", "secret", "token", "password", "passwd", "credential", "auth")
"""A config key or variable whose name contains one of these is never logged (MLflow params)."""
_REDACTED_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_VALUE_MARKERS = ("secret", "token", "password", "passwd", "credential")
"""Values that :func:`redact` hides wherever they appear: those of :data:`_REDACTED_ENV` and the
config values under keys with these markers. Access key ids and user names are identifiers, not
secrets (and short ones like ``anysat-local`` would mangle ordinary text): forwarded through the
secrets file, but not searched for."""

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_MIN_SECRET_LEN = 6  # shorter values would redact ordinary words
_registered: set[str] = set()


def is_secret(name: str) -> bool:
    """Whether a config key or variable name denotes a credential (by its name)."""
    n = name.lower()
    return any(m in n for m in SECRET_MARKERS)


def _has_userinfo(url: str) -> bool:
    return bool(_URL_USERINFO.search(url))


def register_secrets(*options: Any) -> None:
    """Remember the secret values of ``options`` (nested dicts such as ``storage_options``: values
    under a key naming a secret, a token or a password) so that :func:`redact` hides them."""
    def walk(obj: Any, secret: bool) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, secret or any(m in str(k).lower() for m in _VALUE_MARKERS))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, secret)
        elif secret and isinstance(obj, str) and len(obj) >= _MIN_SECRET_LEN:
            _registered.add(obj)

    for o in options:
        walk(o, False)


def _known_secrets() -> list[str]:
    vals = set(_registered)
    vals.update(v for k in _REDACTED_ENV if len(v := os.environ.get(k, "")) >= _MIN_SECRET_LEN)
    return sorted(vals, key=len, reverse=True)  # longest first: a secret containing another one


def redact(text: Any) -> str:
    """``text`` as a string without credentials: URL user info and known secret values -> ``***``."""
    s = _URL_USERINFO.sub(r"\g<scheme>***@", str(text))
    for v in _known_secrets():
        s = s.replace(v, "***")
    return s


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's final message (arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is the logging module's business
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger)."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def _worker_secrets() -> dict[str, str]:
    env = {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if _has_userinfo(uri):
        env["MLFLOW_TRACKING_URI"] = uri
    return env


@contextlib.contextmanager
def secrets_file() -> Iterator[str | None]:
    """The credentials of this process's environment in a file only this user can read (0600 in a
    0700 folder, in ``/dev/shm`` when available), removed on exit; yields its path, or ``None`` when
    the environment holds no credentials."""
    env = _worker_secrets()
    if not env:
        yield None
        return
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
    folder = tempfile.mkdtemp(prefix="anysat-secrets-", dir=base)  # mode 0700
    path = os.path.join(folder, "env.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(env, f)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def worker_env(secrets_path: str | None = None) -> dict[str, str]:
    """The runtime-env variables of the workers: plain settings and the secrets file's path, never a
    credential."""
    env = {k: os.environ[k] for k in PLAIN_ENV if os.environ.get(k)}
    if _has_userinfo(env.get("MLFLOW_TRACKING_URI", "")):
        del env["MLFLOW_TRACKING_URI"]  # in the secrets file
    if secrets_path:
        env[SECRETS_FILE_ENV] = secrets_path
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


_loaded: set[str] = set()


def load_secrets() -> None:
    """Worker side: load the driver's secrets file (path in :data:`SECRETS_FILE_ENV`) into
    ``os.environ``, once per process. Without a readable file (another node of a cluster) the
    process keeps its own environment."""
    path = os.environ.get(SECRETS_FILE_ENV)
    if not path or path in _loaded:
        return
    _loaded.add(path)
    try:
        with open(path) as f:
            env = json.load(f)
    except (OSError, ValueError):
        log.info("no secrets file %s on this node: using this process's own environment", path)
        return
    os.environ.update({str(k): str(v) for k, v in env.items()})
