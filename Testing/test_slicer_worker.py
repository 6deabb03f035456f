"""The worker that stays (AnalysisWorker): lifetime, restarts, cancel and crash recovery, and the temporary folder,
on the real MRML libraries with the fake engine as the worker (Testing/fake_engine.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_slicer_logic import (FAKE_WORKER, bareWidget, cleanupLogics, ctNode, lidc_crop, lidc_nrrd,  # noqa: F401
                               makeLogic, moduleFile, nodules, run, scene, sceneInventory)
from test_worker import is_alive

from LungNoduleExplainSlicer import SessionFolder  # noqa: E402  (test_slicer_logic put it on the path)


def waitUntil(predicate, what: str, timeout_s: float = 60.0) -> None:
    """Wait for something another process does (not a timing assertion: the limit only ends a hung test)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {timeout_s:g} s for {what}")
        time.sleep(0.05)


def succeeds(logic, ctNode, requests) -> bool:
    outcome = run(logic, ctNode, requests)
    assert outcome.succeeded, outcome.message
    return True


def sessionFiles(logic) -> list[str]:
    return sorted(str(p.relative_to(logic.worker.sessionFolder())) for p in logic.worker.sessionFolder().rglob("*")
                  if p.is_file() and p.name != SessionFolder.OWNER_FILE and "results" not in p.parts)


def test_one_worker_serves_every_analysis_and_the_ct_is_exported_once(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0))
    pid, files = logic.worker.runner.pid, sessionFiles(logic)
    for offset in (5.0, -5.0):
        assert succeeds(logic, ctNode, nodules(lidc_crop, offset))
    assert logic.worker.starts == 1 and logic.worker.runner.pid == pid and logic.worker.isAlive()
    assert sessionFiles(logic) == files and len([f for f in files if f.endswith(".nrrd")]) == 1


def test_a_changed_device_or_bundle_restarts_the_worker(scene, ctNode, lidc_crop, tmp_path):
    logic = makeLogic(scene)
    logs = []
    logic.onLog = lambda level, message: logs.append(message)
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="auto")
    assert logic.waitForFinished(timeout_s=60).succeeded and logic.worker.starts == 2
    (tmp_path / "bundle").mkdir()
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="auto", bundlePath=tmp_path / "bundle")
    assert logic.waitForFinished(timeout_s=60).succeeded and logic.worker.starts == 3
    assert logs.count("The model or the device changed: restarting the analysis process") == 2


def test_a_modified_ct_is_exported_again_and_the_old_copy_deleted(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    before = sessionFiles(logic)
    ctNode.GetImageData().Modified()  # e.g. an edit in the Segment Editor's "mask volume"
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0))
    after = sessionFiles(logic)
    assert len(after) == len(before) == 1 and after != before


def test_cancel_kills_the_worker_and_the_next_analyze_starts_a_fresh_one(scene, ctNode, lidc_crop, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY_S", "60")
    logic = makeLogic(scene)
    messages = []
    logic.onProgress = lambda fraction, message: messages.append(message)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu")
    workDir, pid = logic._workDir, logic.worker.runner.pid
    waitUntil(lambda: not logic.poll() or any("segmenting" in m for m in messages), "the worker to start")
    logic.cancel()
    assert logic.lastOutcome.status == "cancelled" and not workDir.exists()
    waitUntil(lambda: not is_alive(pid), "the killed worker to go")
    monkeypatch.setenv("FAKE_DELAY_S", "0")  # the fresh worker reads it
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0)) and logic.worker.starts == 2


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_killed_during_an_analysis_fails_it_clearly_and_the_next_analyze_recovers(
        scene, ctNode, lidc_crop, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY_S", "60")
    logic = makeLogic(scene)
    messages = []
    logic.onProgress = lambda fraction, message: messages.append(message)
    before = sceneInventory(scene)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu")
    workDir = logic._workDir
    waitUntil(lambda: not logic.poll() or any("segmenting" in m for m in messages), "the analysis to start")
    os.killpg(logic.worker.runner.pid, signal.SIGKILL)  # what the out-of-memory killer does
    outcome = logic.waitForFinished(timeout_s=60)
    assert outcome.status == "failed" and "killed by signal 9" in outcome.message
    assert "the next Analyze starts a fresh analysis process" in outcome.message
    assert sceneInventory(scene) == before and not workDir.exists()
    monkeypatch.setenv("FAKE_DELAY_S", "0")
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0)) and logic.worker.starts == 2


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_that_died_while_idle_is_said_and_replaced_on_the_next_analyze(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    logs = []
    logic.onLog = lambda level, message: logs.append((level, message))
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    pid = logic.worker.runner.pid
    os.killpg(pid, signal.SIGKILL)
    waitUntil(lambda: not is_alive(pid), "the worker to die")
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0)) and logic.worker.starts == 2
    # said while idle, or, if the death reaches us only after the request was sent, when a fresh worker takes it
    assert any(level == "warning" and "ended by itself (exit code -9)" in message for level, message in logs)


def test_closing_removes_the_session_folder_and_stops_the_worker(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    session, pid = logic.worker.sessionFolder(), logic.worker.runner.pid
    assert (logic.lastResultDir / "report.html").is_file() and logic.lastResultDir.is_relative_to(session)
    logic.clearPatientData()  # the scene closes: the worker stays, the CT copy and results go
    assert sessionFiles(logic) == [] and not list(session.glob("run-*")) and logic.worker.isAlive()
    logic.cleanup()  # the module or application closes
    assert not session.exists() and not logic.worker.isAlive()
    waitUntil(lambda: not is_alive(pid), "the worker to go")


CRASHING_SLICER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {testing!r})
    from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, NoduleRequest
    from LungNoduleExplainSlicer.HeadlessScene import loadVolume, makeScene
    scene, logics = makeScene()
    ct = loadVolume(scene, {ct!r}, "CT")
    logic = AnalysisLogic(scene, workerCommand={worker!r})
    logic.startAnalysis(ct, [NoduleRequest("p/0", "Nodule 1", tuple({point!r}))], device="cpu")
    assert logic.waitForFinished(timeout_s=120).succeeded
    print(json.dumps({{"session": str(logic.worker.sessionFolder()), "worker": logic.worker.runner.pid}}),
          flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the application crashes: no cleanup, no atexit
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_crashed_application_leaves_no_patient_data_and_no_worker(lidc_crop, tmp_path):
    script = tmp_path / "crashing_slicer.py"
    script.write_text(CRASHING_SLICER.format(testing=str(Path(__file__).parent), ct=str(lidc_crop[0]),
                                             worker=FAKE_WORKER, point=list(lidc_crop[1])))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "LungNoduleExplain"), *sys.path])}
    crashed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    said = json.loads(crashed.stdout.strip().splitlines()[-1])
    # the worker's stdin closed with the application: it removes the session folder (the CT copy) and ends
    waitUntil(lambda: not Path(said["session"]).exists(), "the worker to remove the session folder")
    waitUntil(lambda: not is_alive(said["worker"]), "the worker to end")


def test_a_later_session_sweeps_the_folders_of_sessions_that_no_longer_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = SessionFolder.create(tmp_path)
    (gone / SessionFolder.OWNER_FILE).write_text(json.dumps({"pid": int(dead.stdout)}))
    (gone / "ct-1.nrrd").write_bytes(b"patient data")
    alive = SessionFolder.create(tmp_path)  # this process's own
    stranger = tmp_path / (SessionFolder.PREFIX + "not-ours")  # no owner file: never touched
    stranger.mkdir()
    assert SessionFolder.sweepStale(tmp_path) == [gone]
    assert not gone.exists() and alive.exists() and stranger.exists()


# --- the module loads the model when it is entered, so the first Analyze does not wait -------------------------

def preparingWidget(moduleFile, monkeypatch, logic, ctNode, installed: bool = True):
    """The module widget without Qt, with what prepareAnalysis uses: the log, a timer, the package check."""
    monkeypatch.setattr(moduleFile, "InstallLogic",
                        lambda: types.SimpleNamespace(check=lambda: types.SimpleNamespace(ok=installed)))
    widget = bareWidget(moduleFile, logic, ctNode)
    widget._parameterNode.device = "cpu"
    widget.log = []
    widget.ui.logTextEdit = types.SimpleNamespace(appendPlainText=widget.log.append)
    widget.ui.deviceNoteLabel = types.SimpleNamespace(text="")
    widget.timer = types.SimpleNamespace(active=False)
    widget.timer.start = lambda: setattr(widget.timer, "active", True)
    widget.timer.stop = lambda: setattr(widget.timer, "active", False)
    logic.onLog = widget.onLog  # as setup() connects them
    return widget


def pollLikeTheTimer(widget) -> None:
    while widget.timer.active:
        widget.onPollTimer()
        time.sleep(0.05)


def test_entering_the_module_loads_the_model_in_the_background_and_the_first_analyze_reuses_it(
        moduleFile, monkeypatch, scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    widget = preparingWidget(moduleFile, monkeypatch, logic, ctNode)
    widget.prepareAnalysis()  # what enter() does
    assert logic.worker.isAlive() and logic.isPreparing() and widget.timer.active  # returned before the load
    pid = logic.worker.runner.pid
    pollLikeTheTimer(widget)  # the timer stops itself once the model has answered
    assert any(line.startswith("Model loaded ahead of Analyze (cpu") for line in widget.log), widget.log
    widget.prepareAnalysis()  # entering again: the process that runs is kept, no second load
    assert logic.worker.starts == 1 and not logic.isPreparing() and not widget.timer.active
    assert succeeds(logic, ctNode, nodules(lidc_crop, 0.0))
    assert logic.worker.starts == 1 and logic.worker.runner.pid == pid  # Analyze used the prepared process


def test_nothing_is_prepared_without_the_packages_or_with_a_bundle_path_that_does_not_exist(
        moduleFile, monkeypatch, scene, ctNode, tmp_path):  # noqa: F811
    logic = makeLogic(scene)
    preparingWidget(moduleFile, monkeypatch, logic, ctNode, installed=False).prepareAnalysis()
    widget = preparingWidget(moduleFile, monkeypatch, logic, ctNode)
    widget._parameterNode.bundlePath = tmp_path / "typed-half-way"
    widget.prepareAnalysis()
    assert not logic.worker.isAlive() and logic.worker.starts == 0 and not widget.timer.active


@pytest.mark.parametrize("failure", ["no process", "model load"])
def test_a_failure_preparing_is_a_log_line_and_analyze_still_says_why(moduleFile, monkeypatch, scene, ctNode,
                                                                      lidc_crop, tmp_path, failure):  # noqa: F811
    if failure == "no process":
        logic = makeLogic(scene, [str(tmp_path / "no-such-python")])
    else:
        monkeypatch.setenv("FAKE_FAIL", "load")
        logic = makeLogic(scene)
    finished = []
    logic.onFinished = finished.append
    widget = preparingWidget(moduleFile, monkeypatch, logic, ctNode)
    widget.prepareAnalysis()  # raises nothing, shows no dialog (a dialog would need Qt here)
    pollLikeTheTimer(widget)
    expected = "Could not start the analysis process" if failure == "no process" else \
        "Loading the model ahead of Analyze failed: RuntimeError: simulated failure loading the model"
    assert any(expected in line for line in widget.log), widget.log
    assert finished == [] and not logic.isRunning() and not logic.isPreparing()
    if failure == "model load":
        outcome = run(logic, ctNode, nodules(lidc_crop, 0.0))
        assert outcome.status == "failed" and "simulated failure loading the model" in outcome.message
