"""Runs the engine's worker in a background process and hands its protocol messages to the caller's thread.

The pattern of SlicerMONAIAuto3DSeg: the process writes lines, a reader thread puts them in a queue, and the
owner drains the queue from its own thread (a QTimer in Slicer, a loop in tests), so no MRML or Qt call ever
happens off the main thread. The process gets its own process group (session), so stop() kills the whole tree
(nnU-Net and torch may start helper processes) - a plain QProcess.kill() would leave those running.

Imports no slicer or qt: it is tested outside Slicer.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Callable, Mapping, Optional, Protocol, Sequence

MessageHandler = Callable[[dict], None]
FinishedHandler = Callable[[Optional[int]], None]


def parseLine(line: str) -> dict:
    """A stdout line -> a protocol message; other text (stderr, library prints) becomes a log message."""
    text = line.rstrip("\n")
    if text.lstrip().startswith("{"):
        try:
            message = json.loads(text)
            if isinstance(message, dict) and "type" in message:
                return message
        except json.JSONDecodeError:
            pass
    return {"type": "log", "level": "debug", "message": text}


class ProcessRunnerProtocol(Protocol):
    """What the analysis logic needs from a process runner; tests may inject their own. Like WorkerProcess, a
    runner calls onFinished(exit code) when the process ends and onFinished(None) when stop() ended it."""

    def start(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None: ...

    def send(self, message: dict) -> None: ...

    def poll(self) -> bool: ...

    def stop(self) -> None: ...

    def isRunning(self) -> bool: ...


class WorkerProcess:
    """One background process at a time. onMessage(dict) for each line, onFinished(exit code) once;
    send(dict) writes one JSON line to its stdin (the worker's request loop reads them).

    Both callbacks run inside poll(), on the caller's thread; the exit code is Popen's, so a negative one is the
    signal that killed the process (POSIX), e.g. -9 from the out-of-memory killer. After stop(), onFinished is
    called with None instead - no exit code can be mistaken for it - and no further message is delivered.
    """

    def __init__(self, onMessage: MessageHandler, onFinished: FinishedHandler):
        self.onMessage = onMessage
        self.onFinished = onFinished
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        if self.isRunning():
            raise RuntimeError("a worker process is already running; stop it or wait for it to finish")
        self._queue = queue.Queue()
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
            env=dict(env) if env is not None else None, text=True, encoding="utf-8", errors="replace",
            bufsize=1, **kwargs)
        self._reader = threading.Thread(target=self._read, args=(self._process, self._queue), daemon=True)
        self._reader.start()

    def send(self, message: dict) -> None:
        """One request line to the process; OSError (BrokenPipeError) when it is gone or not started."""
        process = self._process
        if process is None or process.stdin is None:
            raise BrokenPipeError("no worker process is running")
        process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()

    @staticmethod
    def _read(process: subprocess.Popen, lines: queue.Queue) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    def isRunning(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The process id while it runs (it leads its own process group)."""
        return self._process.pid if self._process is not None else None

    def poll(self) -> bool:
        """Deliver what arrived since the last call; True while the process is still running."""
        process = self._process
        if process is None:
            return False
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return True
            if line is None:
                break
            self.onMessage(parseLine(line))
        code = process.wait()
        self._process = None
        _closePipes(process)
        self.onFinished(code)
        return False

    def stop(self) -> None:
        """Kill the process and everything it started; onFinished(None) follows at once."""
        process = self._process
        if process is None:
            return
        self._process = None
        killProcessTree(process)
        if self._reader is not None:
            self._reader.join(timeout=5.0)  # the pipe closes once every process of the group is dead
        _closePipes(process)
        self.onFinished(None)


def _closePipes(process: subprocess.Popen) -> None:
    for pipe in (process.stdin, process.stdout):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:  # a broken pipe's buffered line cannot be flushed any more
            pass


def killProcessTree(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGKILL the worker's process group (POSIX) or `taskkill /T` its tree (Windows), then reap it."""
    if sys.platform == "win32":
        if process.poll() is None:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the worker leads its own session, so pgid == pid
        except ProcessLookupError:
            pass  # the whole group has already exited
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
