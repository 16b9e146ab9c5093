"""How an ingest ends: :class:`IngestResult` when it finishes, :class:`IngestError` when the user must fix
something, and the exit codes the command line maps them to.

A leaf of its own because every part of the ingest needs these: the shard writers raise
:class:`OutputWriteError`, the passes build the result, and the command line on top turns both into an
exit code.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

EXIT_OK, EXIT_USAGE, EXIT_QUARANTINED = 0, 2, 3


class IngestError(Exception):
    """A problem the user must fix (printed as one line, exit code 2)."""


class OutputWriteError(Exception):
    """Writing a shard failed (disk full, permissions); raised by a write task, nothing of the shard recorded."""


def os_error_line(e: OSError, what: str) -> str:
    """One line for an I/O error while ``what``; a full disk says that a rerun resumes."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on device while {what}{where}; nothing of it was recorded, free space and rerun to resume"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied while {what}{where}: {e.strerror}"
    return f"I/O error while {what}{where}: {e.strerror or e}"


@dataclass
class IngestResult:
    url: str
    n_listed: int
    n_tiles: int
    written: int
    quarantine: list[dict]
    shards_total: int
    shards_written: int
    seconds: float
    bytes_written: int
    probe_seconds: float = 0.0
    write_seconds: float = 0.0
    sensor_tiles: dict[str, int] | None = None
    """Tiles that have each stored sensor (optional sensors may be absent from some or all)."""

    @property
    def exit_code(self) -> int:
        return EXIT_QUARANTINED if self.quarantine else EXIT_OK

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.write_seconds, 1e-9)
