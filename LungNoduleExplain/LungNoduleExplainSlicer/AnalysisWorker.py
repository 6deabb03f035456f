"""The analysis process that stays: one per session, the model loaded, one request per Analyze.

The engine's request loop (LungNoduleExplainLib/worker_loop.py) reads JSON lines on stdin and answers on stdout;
this is its client on the module's side. The first request starts the process (importing torch and nnU-Net and
loading the model takes most of a first click); later requests only send a line. The process is restarted when
the bundle or the device changes; cancel() kills it (a half-finished analysis cannot be interrupted more gently:
nnU-Net and torch do not poll for it) and the next request starts a fresh one; if it dies, the request in flight
ends with its exit code and the next request starts a fresh one too. After a result the worker still writes
that run's report.html (the result is shown without waiting for it): waitForFile waits for it when it is wanted.

Its files live in one session folder (SessionFolder.py): the exported CT (kept while the CT is unchanged, since
the worker caches the CT it read by file) and one folder per run. close() removes it; the worker removes it when
its stdin closes (the application crashed); a later session sweeps what a killed machine left.

Imports no slicer or qt: it is tested outside Slicer.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Callable, Sequence

from LungNoduleExplainLib.vocabulary import Device

from . import SessionFolder
from .WorkerProcess import ProcessRunnerProtocol, WorkerProcess

PREPARE_ID = "prepare"  # the id of prepare()'s load request


class AnalysisWorker:
    """onMessage(dict): every message of the request in flight, its final "result" or "error" included (the
    request is over once it arrives). onRequestEnded(exit code or None): the process ended while a request was
    in flight (None: cancel() or a restart ended it). onLog(level, message): what the worker says outside a
    request, e.g. that it died while idle."""

    def __init__(self, command: Sequence[str], onMessage: Callable[[dict], None],
                 onRequestEnded: Callable[[int | None], None], onLog: Callable[[str, str], None] = lambda l, m: None,
                 runnerFactory: Callable[..., ProcessRunnerProtocol] = WorkerProcess,
                 pythonPath: Sequence[str] = ()):
        self.command, self.pythonPath = list(command), list(pythonPath)  # PYTHONPATH entries put first
        self.onMessage, self.onRequestEnded, self.onLog = onMessage, onRequestEnded, onLog
        self.runner = runnerFactory(self._onProcessMessage, self._onProcessEnded)
        self.starts = 0  # processes started: one per session unless restarted
        self.requestId: str | None = None  # the request in flight
        self.preparing = False  # prepare()'s model load has not answered yet
        self._pending: tuple | None = None  # (message, bundle, device) of a request the worker has not taken yet
        self._key: tuple | None = None  # (bundle, device) the running process serves
        self._count = 0
        self._session: Path | None = None
        self._ctFile: tuple[object, Path] | None = None
        self._finalizer = weakref.finalize(self, _close, self.runner, None)

    # --- requests -------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.requestId is not None

    def isAlive(self) -> bool:
        return self.runner.isRunning()

    def runFolder(self) -> Path:
        """A new, empty folder for one run's results in the session folder."""
        self.runner.poll()  # a worker that died while idle is said now, before the next request
        self._count += 1
        folder = self.sessionFolder() / f"run-{self._count}"
        folder.mkdir()
        return folder

    def ctFile(self, key: object, write: Callable[[Path], None]) -> Path:
        """The CT's file in the session folder: `write(path)` is called only when `key` (what identifies the CT's
        voxels and geometry) differs from the last call's; the previous CT's file is deleted then."""
        if self._ctFile is not None and self._ctFile[0] == key and self._ctFile[1].is_file():
            return self._ctFile[1]
        self.removeCtFile()
        self._count += 1
        path = self.sessionFolder() / f"ct-{self._count}.nrrd"
        write(path)
        self._ctFile = (key, path)
        return path

    def submit(self, fields: dict, bundle: str | None, device: str) -> str:
        """Send an analyze request (a worker.Request's JSON fields) to a worker serving `bundle` and `device`;
        returns its id. A worker found dead while sending is replaced once; OSError if that fails too."""
        if self.busy:
            raise RuntimeError("an analysis is already running; cancel it first")
        self._count += 1
        requestId = str(self._count)
        message = {"type": "analyze", "id": requestId, **fields}
        for attempt in (1, 2):
            self._ensure(bundle, device)
            try:
                self.runner.send(message)
                break
            except OSError:
                if attempt == 2:
                    raise
                self.runner.stop()
        self.requestId, self._pending = requestId, (message, bundle, device)
        return requestId

    def prepare(self, bundle: str | None = None, device: str = Device.AUTO) -> None:
        """Start the worker and load the model ahead of the first request (its memory is held from now on)."""
        if not self.busy:
            self._ensure(bundle, device)
            self.runner.send({"type": "load", "id": PREPARE_ID, "bundle": bundle, "device": device})
            # Returns at once (OSError if the process cannot start); the answer, the load's time or why it failed (a
            # request then fails the same way and says so), reaches onLog through poll(), and ends `preparing`.
            self.preparing = True

    def poll(self) -> bool:
        """Deliver what the worker said (call from the main thread); True while a request is in flight."""
        self.runner.poll()
        return self.busy

    def waitForFile(self, path: Path, timeout_s: float = 300.0) -> None:
        """Wait while the worker may still write `path` (the report, written after the result); returns at once if
        it is there or the worker is gone (the caller then finds it missing)."""
        deadline = time.monotonic() + timeout_s
        while not path.exists() and self.runner.isRunning() and time.monotonic() < deadline:
            self.runner.poll()
            time.sleep(0.02)

    def cancel(self) -> None:
        """Kill the worker if a request is in flight; onRequestEnded(None) follows at once."""
        if self.busy:
            self.runner.stop()

    # --- the process ----------------------------------------------------------------------------------------

    def _ensure(self, bundle: str | None, device: str) -> None:
        key = (str(bundle) if bundle else None, device)
        if self.runner.isRunning() and key != self._key:
            self.onLog("info", "The model or the device changed: restarting the analysis process")
            self.runner.stop()
        if self.runner.isRunning():
            return
        env = dict(os.environ)  # as it is now: a restarted worker sees what changed since
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*self.pythonPath, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.runner.start([*self.command, "--serve", "--remove-on-exit", str(self.sessionFolder())], env=env)
        self._key = key
        self.starts += 1

    def _onProcessMessage(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "report":  # a finished request's report.html, written after its result
            return
        if message.get("id") == PREPARE_ID and kind in ("loaded", "error"):
            self.preparing = False
            if kind == "loaded":
                self.onLog("info", f"Model loaded ahead of Analyze ({message.get('device', '?')}, "
                                   f"{message.get('seconds', '?')} s)")
            else:
                self.onLog("warning", f"Loading the model ahead of Analyze failed: {message.get('message', '')}")
            return
        if self.requestId is None or message.get("id") not in (None, self.requestId):
            if kind == "error" or (kind == "log" and message.get("level") in ("warning", "error")):
                self.onLog("warning", str(message.get("message", "")))
            return
        if message.get("id") == self.requestId:
            self._pending = None  # taken: from now on its worker's end is its end
        if kind in ("result", "error"):
            self.requestId = None  # over: the process stays for the next one
        self.onMessage(message)

    def _onProcessEnded(self, exitCode: int | None) -> None:
        self._key, self.preparing = None, False
        pending, self._pending = self._pending, None
        if self.requestId is not None and pending is not None and exitCode is not None:
            # It died before it took the request (a line can reach a dying process's pipe): a fresh one takes it.
            self.onLog("warning", f"the analysis process ended by itself (exit code {exitCode}) before it took the "
                                  "request; a fresh one takes it")
            message, bundle, device = pending
            try:  # once: a worker that cannot start at all fails the request below
                self._ensure(bundle, device)
                self.runner.send(message)
                return
            except OSError:
                requestId, self.requestId = self.requestId, None  # stop() must not end it as cancelled
                self.runner.stop()
                self.requestId = requestId
        if self.requestId is not None:
            self.requestId = None
            self.onRequestEnded(exitCode)
        elif exitCode is not None:
            self.onLog("warning", f"the analysis process ended by itself (exit code {exitCode}) while idle; the "
                                  "next Analyze starts a fresh one")

    # --- files ----------------------------------------------------------------------------------------------

    def sessionFolder(self) -> Path:
        if self._session is None or not self._session.is_dir():
            SessionFolder.sweepStale()  # what a killed session left behind
            self._session = SessionFolder.create()
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _close, self.runner, self._session)
        return self._session

    def removeCtFile(self) -> None:
        if self._ctFile is not None:
            self._ctFile[1].unlink(missing_ok=True)
            self._ctFile = None

    def close(self) -> None:
        """Stop the worker (a request in flight ends as cancelled) and delete the session folder."""
        self.runner.stop()
        self._ctFile = None
        SessionFolder.remove(self._session)
        self._session = None


def _close(runner: ProcessRunnerProtocol, session: Path | None) -> None:
    """At interpreter exit or collection (weakref.finalize: must not hold the worker object itself)."""
    try:
        runner.stop()
    finally:
        SessionFolder.remove(session)
