"""Atomic file writes: every file the engine writes in place goes through `atomic_path`, a temporary file in the
same folder that is renamed (`os.replace`) onto the final name only when the writer finished, so a crash never
leaves a half-written file under the final name and a reader sees the old file or the new one.

A process killed outright (SIGKILL: no clean-up runs) can leave its hidden temporary, `.<name>.<random>.tmp<suffix>`,
beside the file; nothing reads it, and `remove_leftovers` deletes them where a run resumes. Folders written as a
whole go through output_folder.new_folder instead.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer to write to; on success it replaces `path`, on failure it
    is removed and `path` is left as it was.

    The temporary name ends with `path`'s suffixes (".nii.gz", ".png", ".pt"), so writers that choose the format
    from the extension (SimpleITK, matplotlib) write the same format. The file gets the mode a plain open() would
    give: that of the file it replaces, or 0666 less the umask for a new one.

        with atomic_path(out / "checkpoint.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes[-2:]),
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _mode_of(path))  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(path: str | Path) -> int:
    """Delete the temporaries that writers of `path` killed mid-write left beside it (call only where no other
    process writes `path`, e.g. when a run resumes); returns how many."""
    path = Path(path)
    leftovers = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def _mode_of(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return _FILE_MODE


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` through `atomic_path`."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, data: object, indent: int = 2, *, allow_nan: bool = True) -> None:
    """JSON (numpy scalars written as floats) through `write_text_atomic`; allow_nan=False raises ValueError for
    NaN or infinity instead of writing them (not strict JSON)."""
    write_text_atomic(path, json.dumps(data, indent=indent, default=float, allow_nan=allow_nan) + "\n")
