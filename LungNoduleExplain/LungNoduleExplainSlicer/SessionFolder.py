"""The module's one temporary folder per session: the exported CT and each run's results live in it, nowhere else.

They are patient data, so the folder goes with the session: removed by `remove()` (module closed, application
exit), by the worker when its stdin closes (Slicer crashed: worker_loop --remove-on-exit), and, should both fail
(the machine lost power), by the next session's `sweepStale()`, which removes the folders whose owner process is
gone. Only folders with our prefix and an owner file are ever touched.

Imports no slicer or qt: it is tested outside Slicer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "LungNoduleExplain-session-"
OWNER_FILE = "owner.json"


def create(parent: str | Path | None = None) -> Path:
    """A new private folder (mode 0700) in the system temp folder, stamped with this process's id."""
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (folder / OWNER_FILE).write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
    return folder


def remove(folder: str | Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def processAlive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:  # Windows raises OSError for a pid that does not exist
        return False
    return True


def sweepStale(parent: str | Path | None = None) -> list[Path]:
    """Remove the session folders left by processes that no longer run; returns what was removed."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(PREFIX + "*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or being created right now
        if pid != os.getpid() and not processAlive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
