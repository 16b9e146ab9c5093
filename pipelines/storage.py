"""Where stores live: URLs, fsspec filesystems and zarr stores for local paths and ``s3://`` prefixes,
the small JSON objects beside the arrays, and the check that an output location can take a store.

Nothing here knows the store format: the format modules (``pipelines.store_meta``, ``pipelines.store``)
build on it, and code that only needs paths (the ingest lock, the scene maps) uses it without them.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import zarr.storage


def store_url(out: str, dataset: str) -> str:
    return f"{str(out).rstrip('/')}/{dataset}.zarr"


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def zarr_store(url: str, storage_options: dict | None = None, read_only: bool = False):
    """A zarr store object for a local path or an fsspec URL (s3://...)."""
    if is_remote(url):
        # from_url builds an *async* filesystem; a sync s3fs instance fails with "attached to a different loop".
        return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}),
                                                 read_only=read_only)
    path = url[len("file://"):] if url.startswith("file://") else url
    return zarr.storage.LocalStore(path, read_only=read_only)


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Synchronous fsspec filesystem + path, for the small non-array objects (markers, reports)."""
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def read_json(url: str, key: str, storage_options: dict | None = None) -> Any | None:
    fs, root = filesystem(url, storage_options)
    try:
        with fs.open(posixpath.join(root, key), "rb") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the "store" is a plain file
        return None


def write_json(url: str, key: str, obj: Any, storage_options: dict | None = None) -> None:
    fs, root = filesystem(url, storage_options)
    path = posixpath.join(root, key)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if is_remote(url):
        fs.pipe_file(path, data)  # one PUT: atomic on object stores
    else:
        tmp = f"{path}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)  # rename: a killed writer never leaves a half-written marker
        except OSError:
            try:  # a full disk: leave neither a marker nor its half-written temporary file
                os.unlink(tmp)
            except OSError:
                pass
            raise


class OutputError(Exception):
    """The output location cannot hold a store (message: one line naming it and the problem)."""


def _brief(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__


def check_output(out: str, storage_options: dict | None = None) -> None:
    """Raise :class:`OutputError` unless ``out`` can take stores, before any work is done.

    A local path must be a folder, or creatable as one, in which a file can be created (it is created
    here); an ``s3://`` prefix must name an existing bucket that accepts a PUT (a probe object is written
    and deleted).
    """
    out = str(out).rstrip("/") or "/"
    probe = f".anysat-write-check-{uuid.uuid4().hex}"
    if is_remote(out):
        # a PUT, not a bucket lookup: credentials allowed to write a prefix may not be allowed to list buckets
        try:
            fs, path = filesystem(out, storage_options)
            bucket = path.split("/", 1)[0]
            fs.pipe_file(f"{path}/{probe}", b"")
        except FileNotFoundError:
            raise OutputError(f"--out {out}: bucket {bucket!r} does not exist") from None
        except PermissionError as e:
            raise OutputError(f"--out {out}: not writable with these credentials ({_brief(e)})") from None
        except Exception as e:
            raise OutputError(f"--out {out}: cannot write there ({type(e).__name__}: {_brief(e)})") from None
        try:
            fs.rm(f"{path}/{probe}")
        except Exception:
            pass  # written but not deletable: harmless, the write check passed
        return
    path = out[len("file://"):] if out.startswith("file://") else out
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"--out {out} is a file, not a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"--out {out}: {parent} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create the folder ({_brief(e)})") from None
    target = os.path.join(path, probe)
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(target)
    except OSError as e:
        raise OutputError(f"--out {out} is not writable ({_brief(e)})") from None


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, root = filesystem(url, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)

