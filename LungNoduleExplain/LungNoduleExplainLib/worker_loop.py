"""The worker's request loop: `python -m LungNoduleExplainLib.worker --serve [--remove-on-exit DIR]`.

One process per front-end session keeps torch, nnU-Net and the model loaded, so only the first Analyze pays for
them. stdin carries one JSON object per line:

    {"type": "analyze", "id": "3", <the fields of a worker.Request>}   -> progress/log lines, then one "result"
                                                                          or "error", all with "id": "3"; after
                                                                          a result {"type": "report", "id": "3",
                                                                          "report": path} once report.html is
                                                                          written (the result comes first; the
                                                                          report once no request waits)
    {"type": "load", "id": "1", "bundle": null, "device": "auto"}      -> {"type": "loaded", "id": "1", ...}
                                                                          (loads the model ahead of the 1st click)
    {"type": "exit"}                                                    -> the process ends with code 0

At start the worker says {"type": "ready", "pid": ..., "protocol": 1}. A request that fails does not end the
process; cancelling is killing it (the front end starts a fresh one on its next request). The loaded model is
checked against the bundle's files before each request: a bundle changed on disk is loaded (and verified) again.
When stdin closes (the front end exited or crashed) the worker removes --remove-on-exit DIR, the front end's
temporary folder with its copy of the CT, and ends: no patient data is left behind by a crash.

The protocol runs over the pipes of a child process only; it opens no port (a remote worker is not supported).
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import shutil
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

from .devices import choose_device
from .progress import Progress
from .vocabulary import Device
from .worker import (EXIT_OK, AnalyzerLike, MessageWriter, Request, RequestError, _default_analyzer_factory,
                     _default_ct_reader, report_failure, run_request)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
REPORT_IDLE_S = 1.0  # a click within this long of the previous result is answered before that result's report


def bundle_fingerprint(bundle: Path | None) -> tuple:
    """(relative path, size, mtime) of every file of the bundle folder: changes when a file is replaced."""
    if bundle is None:
        from .bundle import default_bundle_path
        bundle = default_bundle_path()
    root = Path(bundle)
    if not root.is_dir():
        return (str(root), "missing")
    entries = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # removed while we looked: the next look tells
                continue
            entries.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class AnalyzerCache:
    """The one loaded analyzer, reused while the bundle (path and files) and the device stay the same."""

    def __init__(self, factory: Callable[..., AnalyzerLike] = _default_analyzer_factory,
                 fingerprint: Callable[[Path | None], tuple] = bundle_fingerprint):
        self.factory, self.fingerprint = factory, fingerprint
        self.key: tuple | None = None
        self.analyzer: AnalyzerLike | None = None
        self.loads = 0

    def __call__(self, *, bundle: Path | None, device: str, progress: Progress) -> AnalyzerLike:
        key = (str(bundle) if bundle else None, device, self.fingerprint(bundle))
        if self.analyzer is not None and key != self.key:
            if key[:2] == self.key[:2]:
                logger.warning("the model bundle %s changed on disk; loading and verifying it again",
                               bundle or "(shipped)")
            self.analyzer, self.key = None, None  # dropped before loading: two models need not fit in memory
        if self.analyzer is None:
            self.analyzer = self.factory(bundle=bundle, device=device, progress=progress)
            self.key, self.loads = key, self.loads + 1
        self.analyzer.progress = progress
        return self.analyzer


class CtCache:
    """The last CT read, reused while its file (path, size, mtime) is the same: the 2nd click on a CT reads none."""

    def __init__(self, reader: Callable[[Path], Any] = _default_ct_reader):
        self.reader = reader
        self.key: tuple | None = None
        self.image: Any = None

    def __call__(self, path: Path) -> Any:
        stat = Path(path).stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key != self.key:
            self.image, self.key = None, None
            self.image, self.key = self.reader(path), key
        return self.image


def serve(argv: Sequence[str], messages: MessageWriter, stdin: IO[str] | Iterable[str], *,
          analyzer_factory: Callable[..., AnalyzerLike] = _default_analyzer_factory,
          ct_reader: Callable[[Path], Any] = _default_ct_reader, **injected: Any) -> int:
    """Answer requests from `stdin` until it closes or says exit. `injected`: findings_writer, cuda_available.

    A result's report (overlays and report.html) is written once no request has come for REPORT_IDLE_S, and
    stops between two overlays when a request comes (it is written again afterwards), so that a click never waits
    for the previous result's report."""
    remove_on_exit = _remove_on_exit(argv)
    analyzers, cts = AnalyzerCache(analyzer_factory), CtCache(ct_reader)
    reports: list[Callable[..., None]] = []  # oldest first
    messages.send("ready", pid=os.getpid(), protocol=PROTOCOL_VERSION)
    lines = iter(stdin)
    try:
        while True:
            if reports and not _line_within(stdin, REPORT_IDLE_S):
                if _write_report(reports[0], messages, lambda: _line_within(stdin, 0.0)):
                    reports.pop(0)
                continue
            line = next(lines, "")
            if not line:
                break
            if not line.strip():
                continue
            answer = _answer(line, messages, analyzers, cts, injected)
            if answer == "exit":
                break
            if callable(answer):
                reports.append(answer)
    finally:
        if remove_on_exit is not None:
            shutil.rmtree(remove_on_exit, ignore_errors=True)
    return EXIT_OK


def _line_within(stream: IO[str] | Iterable[str], seconds: float) -> bool:
    """True when input arrives on `stream` within `seconds`. False when that cannot be known (a stream without a
    file descriptor, or a Windows pipe, which select cannot wait on): the report is then written at once."""
    try:
        ready, _, _ = select.select([stream], [], [], seconds)
    except (OSError, ValueError, TypeError, io.UnsupportedOperation):
        return False
    return bool(ready)


def _write_report(write: Callable[..., None], messages: MessageWriter, interrupted: Callable[[], bool]) -> bool:
    """Write one pending report; False when a request came meanwhile (write it again later). A failure is a log
    line (the result was delivered and stands)."""
    from .reports import ReportInterrupted

    try:
        write(interrupted=interrupted)
    except ReportInterrupted:
        return False
    except Exception as exc:  # noqa: BLE001 - the loop survives; the front end finds report.html missing
        messages.log(f"the report could not be written: {type(exc).__name__}: {exc}", level="warning")
    return True


def _answer(line: str, messages: MessageWriter, analyzers: AnalyzerCache, cts: CtCache,
            injected: dict) -> str | Callable[..., None] | None:
    """Answer one request line; every failure becomes an error line with the request's id. Returns "exit", the
    result's pending report writer, or None."""
    request_id = None
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise RequestError(f"expected a JSON object per line, got {type(data).__name__}")
        request_id = data.get("id")
        kind = data.get("type")
        if kind == "exit":
            return "exit"
        tagged = _Tagged(messages, request_id)
        if kind == "load":
            _load(data, tagged, analyzers, injected.get("cuda_available"))
        elif kind == "analyze":
            request = Request.from_json(data, source=f"request {request_id!r}")
            # the report after the result, unless a test's writer stands in for the real one
            return run_request(request, tagged, ct_reader=cts, analyzer_source=analyzers,
                               report_later="findings_writer" not in injected, **injected)
        else:
            raise RequestError(f"request type {kind!r} is not one of 'analyze', 'load', 'exit'")
    except json.JSONDecodeError as exc:
        report_failure(RequestError(f"a request line is not valid JSON: {exc}"), messages, id=request_id)
    except Exception as exc:  # noqa: BLE001 - the loop survives a failed request; the front end hears why
        report_failure(exc, messages, id=request_id)
    return None


def _load(data: dict, messages: MessageWriter, analyzers: AnalyzerCache, cuda_available) -> None:
    device, note = choose_device(data.get("device", Device.AUTO), cuda_available)
    if note:
        messages.log(note, level="warning")
    start = time.perf_counter()
    bundle = Path(data["bundle"]) if data.get("bundle") else None
    analyzers(bundle=bundle, device=device, progress=lambda fraction, message: None)
    messages.send("loaded", device=device, seconds=round(time.perf_counter() - start, 3))


class _Tagged(MessageWriter):
    """A MessageWriter that adds the request's id to every line."""

    def __init__(self, inner: MessageWriter, request_id: Any):
        super().__init__(inner.stream)
        self.request_id = request_id

    def send(self, message_type: str, **fields: Any) -> None:
        super().send(message_type, id=self.request_id, **fields)


def _remove_on_exit(argv: Sequence[str]) -> Path | None:
    if not argv:
        return None
    if len(argv) != 2 or argv[0] != "--remove-on-exit":
        raise RequestError(f"usage: --serve [--remove-on-exit DIR] (got {' '.join(argv)})")
    return Path(argv[1])
