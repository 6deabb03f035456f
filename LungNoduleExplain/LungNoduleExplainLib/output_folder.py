"""One rule for every verb's output folder: a non-empty folder is refused unless asked (`--overwrite`), and even
then only a folder this program wrote (it holds MARKER) is replaced, by renames, so nobody's files are deleted and
a failure leaves the old folder in place. Resumable verbs (`train --resume`, `prepare`) reuse only their own folder.

Every folder written as a whole (a verb's output, a model bundle, the DICOM objects) is built by `new_folder`: in a
hidden folder beside the target, renamed into place when complete (`replace_folder`). On failure the target is as
it was (an old one renamed back) and the half-written folder is removed.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import __version__
from .atomic import write_json_atomic
from .errors import OutputExistsError

MARKER = ".lungnodule-explain"


def is_ours(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_output_folder(folder: Path, *, overwrite: bool, resume: bool = False, option: str = "--out") -> None:
    """Raise OutputExistsError unless `folder` may be written: absent or empty; or ours and `overwrite` (to be
    replaced) or `resume` (to be continued)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{option} {folder} exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if resume:
        if not is_ours(folder):
            raise OutputExistsError(f"{option} {folder} holds files that lungnodule-explain did not write (no "
                                    f"{MARKER} in it); it cannot be continued: choose an empty folder")
        return
    if not overwrite:
        raise OutputExistsError(f"{option} folder {folder} already exists and is not empty; choose another folder "
                                "or pass --overwrite")
    if not is_ours(folder):
        raise OutputExistsError(f"--overwrite replaces only a folder that lungnodule-explain wrote (one holding "
                                f"{MARKER}); {folder} is not one, so nothing was deleted: choose another folder")


def mark(folder: Path, verb: str) -> None:
    """Record in `folder` that this program (verb, version) wrote it."""
    write_json_atomic(Path(folder) / MARKER, {"written_by": "lungnodule-explain", "verb": verb,
                                              "version": __version__})


def staging_folder(target: Path) -> Path:
    """A new hidden folder beside `target` (same file system, so the final rename is atomic)."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()  # not mkdtemp: its 0700 mode would make the results unreadable to others (umask applies here)
    return staging


def replace_folder(staging: Path, target: Path, verb: str | None = None) -> None:
    """Rename the finished folder `staging` to `target`, marked as `verb`'s output when given. An existing `target`
    (checked by check_output_folder, for a verb's output) is renamed aside and deleted only once `staging` is in its
    place; when the rename fails the old `target` is renamed back and `staging` stays where it is, for the caller to
    remove (new_folder does) or to resume from (train-segmentation's `<out>.partial`)."""
    staging, target = Path(staging), Path(target)
    if verb is not None:
        mark(staging, verb)
    if not target.exists():
        staging.rename(target)
        return
    previous = _aside(target)
    try:
        staging.rename(target)
    except BaseException:
        previous.rename(target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def new_folder(target: Path, verb: str | None = None) -> Iterator[Path]:
    """Yield a new staging folder beside `target` to write into; when the block ends without error it replaces
    `target` (replace_folder, marked as `verb`'s output when given). On any failure, in the block or in the
    replacement, the staging folder is removed and `target` is as it was.

        with new_folder(out, verb="evaluate") as folder:
            write_json_atomic(folder / "metrics.json", metrics)
    """
    staging = staging_folder(target)
    try:
        yield staging
        replace_folder(staging, target, verb)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _aside(folder: Path) -> Path:
    """Rename `folder` to a hidden sibling (one rename: atomic) and return where it went."""
    previous = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.previous"
    folder.rename(previous)
    return previous


def start_folder(folder: Path, verb: str, *, overwrite: bool, resume: bool = False) -> None:
    """For verbs that write into their folder as they go (train): check, move an old folder of ours away when
    replacing it, create and mark the folder."""
    folder = Path(folder)
    check_output_folder(folder, overwrite=overwrite, resume=resume)
    if overwrite and not resume and folder.is_dir() and any(folder.iterdir()):
        shutil.rmtree(_aside(folder), ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not is_ours(folder):
        mark(folder, verb)
