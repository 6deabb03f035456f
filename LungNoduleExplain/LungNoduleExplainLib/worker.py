"""Background worker: `python -m LungNoduleExplainLib.worker REQUEST.json`, or `--serve` for many requests.

Slicer (or any front end) runs this in its own process so its UI never freezes, and reads one JSON object per
line on stdout. With --serve the process stays, the model loaded, and reads one request per line on stdin
(worker_loop.py: the same messages, each with the request's "id"). One request:

    {"type": "progress", "fraction": 0.0-1.0, "message": "..."}
    {"type": "log", "level": "info" | "warning" | "error", "message": "..."}
    {"type": "result", "out_dir": "...", "findings": ["<out_dir>/nodule-01/finding.json", ...],
     "report": "<out_dir>/report.html" | null, "device": "cpu" | "cuda"}
    {"type": "error", "message": "...", "error_type": "InputImageError"}

Exit code: 0 success, 2 bad input (an engine error whose message says what was expected), 1 unexpected failure.
Anything else a library prints goes to stderr, so stdout carries only protocol lines.

The request (JSON object):
    ct: path of a CT (DICOM folder, NRRD, NIfTI, MHA); points: [[x, y, z], ...]; space: "ras" | "lps" | "ijk"
    (vocabulary.PointSpace; default "ras"); bundle: null (the shipped model) or a bundle path; device: "auto" |
    "cpu" | "cuda" (vocabulary.Device; devices.choose_device's rule: "cuda" without a GPU is an error);
    out_dir: folder for write_findings' layout (nodule-01/finding.json, ..., report.html), absent or empty;
    source (optional): how the user knows the CT, shown in the report; classify_anyway (optional, default false):
    classify a point where no nodule is found (research; the finding carries the warning). Without it such a point
    is an error when it is the only one, and a "no nodule found" entry (nodule-0k/finding.json with
    no_nodule_found, reason, nodule_check) among several.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Protocol, Sequence

from .devices import choose_device
from .errors import InputImageError, LungNoduleExplainError
from .progress import part
from .vocabulary import Device, PointSpace

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class RequestError(LungNoduleExplainError, ValueError):
    """The worker's request file is missing, not JSON, or lacks a required field."""


class AnalyzerLike(Protocol):
    def analyze(self, ct: Any, point: Sequence[float], space: str = PointSpace.RAS) -> Any: ...


AnalyzerFactory = Callable[..., AnalyzerLike]  # (bundle=, device=, progress=) -> analyzer
FindingsWriter = Callable[..., Path]  # (findings, ct, out_dir, source=, progress=) -> report path


@dataclass(frozen=True)
class Request:
    ct: Path
    points: list[tuple[float, float, float]]
    out_dir: Path
    space: str = PointSpace.RAS.value
    bundle: Path | None = None
    device: str = Device.AUTO.value
    source: str = ""  # how the user knows the CT (e.g. the Slicer volume's name), shown in the report
    classify_anyway: bool = False  # classify points where no nodule is found (research)

    @classmethod
    def from_json(cls, data: Any, source: str = "request") -> "Request":
        if not isinstance(data, dict):
            raise RequestError(f"{source}: expected a JSON object, got {type(data).__name__}")
        for key in ("ct", "points", "out_dir"):
            if key not in data:
                raise RequestError(f"{source}: missing field {key!r}; required fields are ct, points, out_dir")
        points = data["points"]
        if not isinstance(points, list) or not points:
            raise RequestError(f"{source}: 'points' must be a non-empty list of [x, y, z], got {points!r}")
        for point in points:
            if not isinstance(point, (list, tuple)) or len(point) != 3 or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
                raise RequestError(f"{source}: each point must be [x, y, z] numbers, got {point!r}")
        space = data.get("space", PointSpace.RAS.value)
        if space not in PointSpace.names():
            raise RequestError(f"{source}: 'space' is {space!r}; expected one of {PointSpace.names()}")
        device = data.get("device", Device.AUTO.value)
        if device not in Device.names():
            raise RequestError(f"{source}: 'device' is {device!r}; expected one of {Device.names()}")
        bundle = data.get("bundle")
        classify_anyway = data.get("classify_anyway", False)
        if not isinstance(classify_anyway, bool):
            raise RequestError(f"{source}: 'classify_anyway' is {classify_anyway!r}; expected true or false")
        return cls(ct=Path(data["ct"]), points=[tuple(float(v) for v in p) for p in points],
                   out_dir=Path(data["out_dir"]), space=space,
                   bundle=Path(bundle) if bundle else None, device=device, source=str(data.get("source") or ""),
                   classify_anyway=classify_anyway)

    @classmethod
    def read(cls, path: str | Path) -> "Request":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RequestError(f"request file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise RequestError(f"request file {path} is not valid JSON: {exc}") from exc
        return cls.from_json(data, source=str(path))

    def to_json(self) -> dict:
        return {"ct": str(self.ct), "points": [list(p) for p in self.points], "space": self.space,
                "bundle": str(self.bundle) if self.bundle else None, "device": self.device,
                "out_dir": str(self.out_dir), "source": self.source, "classify_anyway": self.classify_anyway}


class MessageWriter:
    """Writes protocol messages as JSON lines, flushed at once so the reader sees progress live."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def send(self, message_type: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"type": message_type, **fields}) + "\n")
        self.stream.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.send("progress", fraction=round(min(max(float(fraction), 0.0), 1.0), 4), message=message)

    def log(self, message: str, level: str = "info") -> None:
        self.send("log", level=level, message=message)


class _ProtocolLogHandler(logging.Handler):
    """Forwards the engine's INFO+ log records as protocol log lines."""

    def __init__(self, messages: MessageWriter):
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.log(record.getMessage(), level=record.levelname.lower())
        except Exception:  # noqa: BLE001 - a log line must never kill the analysis
            self.handleError(record)


def _default_analyzer_factory(**kwargs: Any) -> AnalyzerLike:
    from .analysis import Analyzer
    return Analyzer(**kwargs)


def _default_findings_writer(findings: list, ct: Any, out_dir: Path, **kwargs: Any) -> Path:
    """reports.write_findings (source=, progress=), imported only when used."""
    from .reports import write_findings
    return write_findings(findings, ct, out_dir, **kwargs)


def _default_report_writer(findings: list, ct: Any, out_dir: Path, **kwargs: Any) -> Path:
    """reports.add_report (source=), imported only when used."""
    from .reports import add_report
    return add_report(findings, ct, out_dir, **kwargs)


def _default_ct_reader(path: Path) -> Any:
    from .volume import read_ct
    return read_ct(path)


def run_request(request: Request, messages: MessageWriter, *,
                analyzer_factory: AnalyzerFactory = _default_analyzer_factory,
                findings_writer: FindingsWriter = _default_findings_writer,
                ct_reader: Callable[[Path], Any] = _default_ct_reader,
                cuda_available: Callable[[], bool] | None = None,
                analyzer_source: Callable[..., AnalyzerLike] | None = None,
                report_later: bool = False) -> Callable[..., None] | None:
    """Analyse every point of the request and write the results; raises on failure (main turns it into a line).
    analyzer_source(bundle=, device=, progress=) -> analyzer: where the analyzer comes from (the request loop's
    cache of loaded models, worker_loop.py); analyzer_factory when None. report_later: send the result once the
    files a viewer needs are written (findings_writer(report=False)) and return what writes the overlays and
    report.html and then says {"type": "report", "report": path}: the front end shows the results ~1-2 s sooner,
    and the request loop writes the report when no other request waits (worker_loop.serve)."""
    device, note = choose_device(request.device, cuda_available)
    if note:
        messages.log(note, level="warning")
    # Share of the bar: 5 % reading and model loading, 85 % analysing, 10 % writing.
    messages.progress(0.0, f"Reading CT {request.ct.name}")
    if not request.ct.exists():
        raise InputImageError(f"the CT file {request.ct} is gone; export the CT again (was the temporary folder "
                              "cleaned while the analysis was starting?)")
    ct = ct_reader(request.ct)
    messages.progress(0.02, f"Loading the model on {device.upper()}")
    from .points import ClickedPoint, analyze_points
    analyzer = (analyzer_source or analyzer_factory)(bundle=request.bundle, device=device, progress=None)
    points = [ClickedPoint(tuple(p), request.space, f"point {i}") for i, p in enumerate(request.points, start=1)]
    findings = analyze_points(analyzer, ct, points, classify_anyway=request.classify_anyway,
                              progress=part(messages.progress, 0.05, 0.9))
    messages.progress(0.9, "Writing segmentation, maps and report")
    source = request.source or str(request.ct)
    report = findings_writer(findings, ct, request.out_dir, source=source,
                             progress=part(messages.progress, 0.9, 1.0),
                             **({"report": False} if report_later else {}))
    from .reports import finding_files
    paths = finding_files(request.out_dir, len(points))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"the findings writer did not write {', '.join(missing)}")
    messages.progress(1.0, "Done")
    messages.send("result", out_dir=str(request.out_dir), findings=[str(p) for p in paths],
                  report=str(report) if report and not report_later else None, device=device)
    if not report_later:
        return None

    def write_report(interrupted: Callable[[], bool] | None = None) -> None:
        """Raises reports.ReportInterrupted when interrupted() says so (call it again later)."""
        if not request.out_dir.is_dir():  # the front end removed that run's results: nobody wants its report
            return
        report = _default_report_writer(findings, ct, request.out_dir, source=source, interrupted=interrupted)
        messages.send("report", report=str(report))
    return write_report


def main(argv: Sequence[str] | None = None, *, stream: IO[str] | None = None, stdin: IO[str] | None = None,
         **injected: Any) -> int:
    """Run one request (REQUEST.json), or with --serve every request read from `stdin` (worker_loop.py).
    `stream` (tests) receives the messages; by default the real stdout does, and fd 1 is pointed at stderr so that
    prints from libraries (nnU-Net, torch) cannot corrupt the messages.
    `injected`: analyzer_factory, findings_writer, ct_reader, cuda_available (see run_request)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if stream is None:
        stream = _claim_stdout()
    messages = MessageWriter(stream)
    handler = _ProtocolLogHandler(messages)
    engine_logger = logging.getLogger(__package__)
    engine_logger.addHandler(handler)
    engine_logger.setLevel(logging.INFO)
    try:
        if argv and argv[0] == "--serve":
            from .worker_loop import serve
            return serve(argv[1:], messages, sys.stdin if stdin is None else stdin, **injected)
        if len(argv) != 1:
            raise RequestError(f"usage: python -m {__package__}.worker REQUEST.json | --serve [--remove-on-exit "
                               f"DIR] (got {len(argv)} arguments)")
        run_request(Request.read(argv[0]), messages, **injected)
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the front end must hear about every failure, with its traceback
        return report_failure(exc, messages)
    finally:
        engine_logger.removeHandler(handler)


def report_failure(exc: Exception, messages: MessageWriter, **fields: Any) -> int:
    """The error line for `exc` (with its traceback in the log unless it is an engine error, whose message says
    what was expected); returns the exit code it stands for."""
    if isinstance(exc, LungNoduleExplainError):
        messages.send("error", message=str(exc), error_type=type(exc).__name__, **fields)
        return EXIT_BAD_INPUT
    messages.log(traceback.format_exc(), level="error")
    messages.send("error", message=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__, **fields)
    return EXIT_FAILURE


def _claim_stdout() -> IO[str]:
    """A private copy of stdout for the protocol; fd 1 and sys.stdout then go to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1)


if __name__ == "__main__":
    sys.exit(main())
