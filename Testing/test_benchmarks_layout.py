"""benchmarks/ reruns from a fresh clone: one folder per experiment with its README, every script answers --help,
no recorded file names a machine's folders, and results are stamped (benchmarks/common.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# Files that may lie directly in benchmarks/: the shared helper and the index.
TOP_LEVEL = {"common.py", "README.md"}

# Runs each script as `python SCRIPT --help` would (its folder first on sys.path, run as __main__), all in one
# interpreter so torch is imported once; prints {script: [exit code, output]} as JSON.
HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys
results = {}
for script in sys.argv[1:]:
    folder = script.rsplit("/", 1)[0]
    sys.path.insert(0, folder)
    sys.argv = [script, "--help"]
    out = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException as error:
        code, out = 1, io.StringIO(f"{type(error).__name__}: {error}")
    sys.path.remove(folder)
    results[script] = [code, out.getvalue()[:2000]]
print(json.dumps(results))
"""


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "benchmarks"], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):  # not a git checkout (e.g. an unpacked archive)
        return [p for p in BENCHMARKS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [REPO / name for name in listed]


def scripts() -> list[Path]:
    return sorted(p for p in tracked_files() if p.suffix == ".py" and p.is_file()
                  and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))


def test_each_experiment_is_a_folder_with_a_readme():
    loose = sorted(p.name for p in BENCHMARKS.iterdir() if p.is_file() and p.name not in TOP_LEVEL)
    assert loose == [], f"files outside an experiment folder: {loose}"
    folders = sorted(p for p in BENCHMARKS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert len(folders) >= 10
    without = [p.name for p in folders if not (p / "README.md").is_file()]
    assert without == [], f"experiment folders without a README.md: {without}"


def test_no_tracked_benchmark_file_names_a_machine_folder():
    named = [str(p.relative_to(REPO)) for p in tracked_files() if p.is_file() and b"/work/" in p.read_bytes()]
    assert named == [], f"absolute machine paths (/work/...) in {named}; name inputs under $LUNGNODULE_DATA or " \
                        "$LUNGNODULE_RUNS instead"


def test_every_benchmark_script_answers_help():
    found = scripts()
    assert len(found) >= 15, [str(p) for p in found]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "LungNoduleExplain"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, *map(str, found)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {Path(s).relative_to(REPO).as_posix(): out for s, (code, out) in results.items()
              if code != 0 or "usage:" not in out}
    assert failed == {}, failed


def test_stamp_records_commit_and_input_checksums(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    table = tmp_path / "data" / "nodules.csv"
    table.parent.mkdir()
    table.write_text("case_id\nA\n")
    result = tmp_path / "results.md"
    result.write_text("| output | auc |\n")
    stamp = json.loads(common.write_stamp(result, [table.parent, tmp_path / "absent"]).read_text())
    assert stamp["result"] == "results.md"
    commit = stamp["git_commit"].removesuffix("-dirty")
    assert len(commit) == 40 or commit.startswith("unknown"), commit
    assert list(stamp["inputs"].values()) == [common.sha256(table), "missing"]
    assert common.runs_path("ens5").parent == common.RUNS_ROOT
    assert common.data_path("/elsewhere/lidc-voi") == Path("/elsewhere/lidc-voi")


def test_a_rerun_rewriting_its_own_results_is_not_dirty_but_changed_code_is(monkeypatch):
    import types

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    status = {"text": ""}

    def run(command, **kwargs):
        return types.SimpleNamespace(stdout="abc123\n" if "rev-parse" in command else status["text"])

    monkeypatch.setattr(common.subprocess, "run", run)
    folder = common.BENCHMARKS / "slicer_worker"
    status["text"] = " M benchmarks/slicer_worker/results_clicks.json\n M benchmarks/slicer_worker/README.md\n"
    assert common.git_commit(folder) == "abc123"
    assert common.git_commit() == "abc123-dirty"
    status["text"] += " M benchmarks/slicer_worker/bench_worker.py\n"
    assert common.git_commit(folder) == "abc123-dirty"
    status["text"] = " M LungNoduleExplain/LungNoduleExplainLib/points.py\n"
    assert common.git_commit(folder) == "abc123-dirty"
