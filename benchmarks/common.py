"""What every benchmark script shares: where its inputs live, and the stamp written beside its results.

Inputs are named relative to two roots, each given by a setting:

- ``LUNGNODULE_DATA``: the shared data (default ``../shared/data`` from the repository root, as Testing/conftest.py),
  holding ``lidc-voi/``, ``lidc-ct/``;
- ``LUNGNODULE_RUNS``: training runs, out-of-fold maps and other made inputs (default ``runs/`` in the repository,
  ignored by git).

A script takes ``--data lidc-voi`` or ``--run ens5_all_pvoi`` (names under a root; an absolute path is kept as given),
so a recorded command reruns on any machine that has the same names under its roots.
Scripts import this module with ``sys.path.insert(0, str(Path(__file__).resolve().parents[1]))``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DATA_ROOT = Path(os.environ.get("LUNGNODULE_DATA", REPO.parent / "shared" / "data"))
RUNS_ROOT = Path(os.environ.get("LUNGNODULE_RUNS", REPO / "runs"))

# The tables whose checksums identify an input folder (the first found of each kind is hashed).
INPUT_TABLES = ("nodules.csv", "manifest.json", "bundle/manifest.json", "predictions.csv", "split.json")


def data_path(name: str | Path) -> Path:
    """``name`` under LUNGNODULE_DATA (e.g. ``lidc-voi``); an absolute path is returned as it is."""
    return Path(name) if Path(name).is_absolute() else DATA_ROOT / name


def runs_path(name: str | Path) -> Path:
    """``name`` under LUNGNODULE_RUNS (e.g. ``ens5_all_pvoi``, ``oof/nnunet``); an absolute path as it is."""
    return Path(name) if Path(name).is_absolute() else RUNS_ROOT / name


def git_commit(results_folder: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository, with ``-dirty`` when the tracked tree has changes other than the
    results being written (files in ``results_folder`` that are not code: a rerun rewrites its tracked results
    before it stamps them)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        return f"unknown ({error})"
    changed = [REPO / line[3:].strip() for line in status.stdout.splitlines() if line.strip()]
    if results_folder is not None:
        results_folder = Path(results_folder).resolve()
        changed = [c for c in changed if not (c.parent.resolve() == results_folder and c.suffix != ".py")]
    return head.stdout.strip() + ("-dirty" if changed else "")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(inputs: Iterable[Path]) -> dict[str, str]:
    """SHA-256 per input: a file's own, a folder's of its tables (INPUT_TABLES that exist), keyed by path
    relative to its root where it lies under one."""
    sums: dict[str, str] = {}
    for path in inputs:
        path = Path(path)
        files = [path] if path.is_file() else [path / t for t in INPUT_TABLES if (path / t).is_file()]
        if not files:
            sums[named(path)] = "missing" if not path.exists() else "no table"
        for file in files:
            sums[named(file)] = sha256(file)
    return sums


def named(path: Path) -> str:
    """A path as `$LUNGNODULE_DATA/...`, `$LUNGNODULE_RUNS/...` or `./...` (repository) where it lies under one,
    so recorded results name no machine's folders."""
    resolved = path.resolve()
    for label, root in (("$LUNGNODULE_DATA", DATA_ROOT), ("$LUNGNODULE_RUNS", RUNS_ROOT), (".", REPO)):
        try:
            return f"{label}/{resolved.relative_to(root.resolve()).as_posix()}"
        except ValueError:
            continue
    return str(path)


def write_stamp(result: Path, inputs: Iterable[Path]) -> Path:
    """Writes ``<result>.stamp.json`` beside ``result``: the command, the git commit (``-dirty`` when the tree had
    changes) and the SHA-256 of the inputs' tables. Returns its path."""
    result = Path(result)
    stamp = {"result": result.name, "command": "python " + " ".join(sys.argv),
             "git_commit": git_commit(result.parent),
             "inputs": input_checksums(inputs)}
    out = result.with_name(result.stem + ".stamp.json")
    out.write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def write_report(text: str, results: dict, out: Path | None, inputs: Iterable[Path] = ()) -> None:
    """The tail every comparison shares: the markdown with the command that made it, printed; with ``out`` written
    there, its numbers as JSON beside it and the stamp."""
    text = text + f"\n\nCommand: `python {' '.join(sys.argv)}`\n"
    print(text)
    if out is not None:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float))
        write_stamp(out, inputs)
