"""The worker's JSON-lines protocol (engine side) and the background process runner (front-end side)."""

from __future__ import annotations

import html
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT
from fake_engine import FakeAnalyzer, fake_write_findings
from LungNoduleExplainLib import worker
from LungNoduleExplainLib.volume import lps_to_ras

sys.path.insert(0, str(REPO_ROOT / "LungNoduleExplain"))
from LungNoduleExplainSlicer.WorkerProcess import WorkerProcess, parseLine  # noqa: E402

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


@pytest.fixture()
def small_ct(tmp_path: Path) -> Path:
    array = np.full((12, 24, 20), -1000, dtype=np.int16)
    array[4:8, 8:16, 6:14] = 40
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-10.0, -12.0, 5.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def centre_ras(ct_path: Path) -> list[float]:
    image = sitk.ReadImage(str(ct_path))
    lps = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    return [float(v) for v in lps_to_ras(lps)]


def write_request(tmp_path: Path, ct: Path, n_points: int = 1, **fields) -> Path:
    point = centre_ras(ct)
    request = {"ct": str(ct), "points": [point] * n_points, "space": "ras", "bundle": None,
               "device": "auto", "out_dir": str(tmp_path / "out"), **fields}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return path


def run_in_process(request: Path, **injected) -> tuple[int, list[dict]]:
    stream = io.StringIO()
    injected.setdefault("analyzer_factory", FakeAnalyzer)
    injected.setdefault("findings_writer", fake_write_findings)
    injected.setdefault("cuda_available", lambda: False)
    code = worker.main([str(request)], stream=stream, **injected)
    return code, [json.loads(line) for line in stream.getvalue().splitlines()]


def test_progress_rises_to_one_and_the_result_lists_every_finding(tmp_path, small_ct):
    code, messages = run_in_process(write_request(tmp_path, small_ct, n_points=2))
    assert code == 0
    fractions = [m["fraction"] for m in messages if m["type"] == "progress"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert any("Nodule 2/2" in m["message"] for m in messages if m["type"] == "progress")
    result = messages[-1]
    assert result["type"] == "result" and result["device"] == "cpu"
    assert [Path(p).parent.name for p in result["findings"]] == ["nodule-01", "nodule-02"]
    assert all(Path(p).is_file() for p in result["findings"])


def test_falling_back_to_cpu_is_said_as_a_warning(tmp_path, small_ct):
    _, messages = run_in_process(write_request(tmp_path, small_ct, device="auto"))
    warnings = [m["message"] for m in messages if m["type"] == "log" and m["level"] == "warning"]
    assert warnings == ["CUDA not available: running on CPU"]


def test_explicit_cuda_without_a_gpu_is_an_error_line_that_says_what_to_choose(tmp_path, small_ct):
    code, messages = run_in_process(write_request(tmp_path, small_ct, device="cuda"))
    assert code == 2
    error = messages[-1]
    assert error["type"] == "error" and error["error_type"] == "ConfigError"
    assert "no CUDA GPU" in error["message"] and "'auto'" in error["message"] and "'cpu'" in error["message"]
    assert not (tmp_path / "out").exists(), "nothing runs on a device the user did not ask for"


def test_choosing_cpu_gives_no_fallback_note(tmp_path, small_ct):
    _, messages = run_in_process(write_request(tmp_path, small_ct, device="cpu"))
    assert not [m for m in messages if m["type"] == "log" and m["level"] == "warning"]


def test_the_analyzer_receives_the_resolved_device_and_the_bundle(tmp_path, small_ct):
    seen = {}

    def factory(**kwargs):
        seen.update(kwargs)
        return FakeAnalyzer(**kwargs)

    run_in_process(write_request(tmp_path, small_ct, bundle=str(tmp_path / "my-bundle")),
                   analyzer_factory=factory, cuda_available=lambda: True)
    assert seen["device"] == "cuda" and seen["bundle"] == tmp_path / "my-bundle"


@pytest.mark.parametrize("change, expected", [
    ({"points": []}, "'points' must be a non-empty list"),
    ({"points": [[1, 2]]}, "each point must be [x, y, z]"),
    ({"space": "xyz"}, "'space' is 'xyz'"),
    ({"device": "tpu"}, "'device' is 'tpu'"),
])
def test_a_bad_request_is_an_error_line_with_exit_code_2(tmp_path, small_ct, change, expected):
    code, messages = run_in_process(write_request(tmp_path, small_ct, **change))
    assert code == 2
    assert messages[-1]["type"] == "error" and messages[-1]["error_type"] == "RequestError"
    assert expected in messages[-1]["message"]


def test_a_missing_request_file_names_the_path(tmp_path):
    code, messages = run_in_process(tmp_path / "nope.json")
    assert code == 2 and "nope.json" in messages[-1]["message"]


def test_an_engine_input_error_keeps_its_type_and_message(tmp_path, small_ct):
    def failing(**kwargs):
        return FakeAnalyzer(**kwargs, fail="input")

    code, messages = run_in_process(write_request(tmp_path, small_ct), analyzer_factory=failing)
    assert code == 2
    assert messages[-1]["error_type"] == "PointError" and "far from any tissue" in messages[-1]["message"]
    assert not (tmp_path / "out").exists()


def test_an_unexpected_crash_exits_1_with_its_traceback_in_the_log(tmp_path, small_ct):
    def crashing(**kwargs):
        return FakeAnalyzer(**kwargs, fail="crash")

    code, messages = run_in_process(write_request(tmp_path, small_ct), analyzer_factory=crashing)
    assert code == 1
    assert messages[-1] == {"type": "error", "message": "RuntimeError: simulated crash inside the model",
                            "error_type": "RuntimeError"}
    assert any("Traceback" in m["message"] for m in messages if m["type"] == "log" and m["level"] == "error")


def test_a_writer_that_skips_a_nodule_is_an_error(tmp_path, small_ct):
    def lazy_writer(findings, ct, out_dir, **kwargs):
        return fake_write_findings(findings[:1], ct, out_dir)

    code, messages = run_in_process(write_request(tmp_path, small_ct, n_points=2), findings_writer=lazy_writer)
    assert code == 1 and "nodule-02" in messages[-1]["message"]


# --- the worker as a real background process, read through WorkerProcess -------------------------------------

class Collector:
    def __init__(self):
        self.messages: list[dict] = []
        self.exitCodes: list[int] = []
        self.process = WorkerProcess(self.messages.append, self.exitCodes.append)

    def start(self, request: Path, **env: str) -> None:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
        self.process.start([sys.executable, str(FAKE_ENGINE), str(request)], env=environment)

    def waitFor(self, predicate, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            running = self.process.poll()
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {timeout_s} s; messages so far: {self.messages[-3:]}")
            if not running and not predicate():
                raise AssertionError(f"process ended first; messages: {self.messages[-3:]}")
            time.sleep(0.05)


def test_only_protocol_lines_reach_stdout_even_when_libraries_print(tmp_path, small_ct):
    collector = Collector()
    collector.start(write_request(tmp_path, small_ct), FAKE_NOISE="1")
    collector.waitFor(lambda: collector.exitCodes)
    assert collector.exitCodes == [0]
    noise = [m for m in collector.messages if "noise" in m.get("message", "")]
    assert len(noise) == 2 and all(m["level"] == "debug" for m in noise)  # arrived on stderr, as plain text
    assert collector.messages[-1]["type"] == "result"


def test_cancel_kills_the_whole_process_tree_and_delivers_no_result(tmp_path, small_ct):
    collector = Collector()
    collector.start(write_request(tmp_path, small_ct), FAKE_DELAY_S="60", FAKE_GRANDCHILD="1")
    collector.waitFor(lambda: any("grandchild pid" in m.get("message", "") for m in collector.messages))
    grandchild = int(next(m["message"] for m in collector.messages if "grandchild pid" in m.get("message", ""))
                     .split()[-1])
    started = time.monotonic()
    collector.process.stop()
    assert time.monotonic() - started < 10
    assert collector.exitCodes == [None]  # no exit code: stop() ended it
    assert not collector.process.isRunning() and collector.process.poll() is False
    assert not any(m["type"] == "result" for m in collector.messages)
    assert not (tmp_path / "out").exists()
    time.sleep(0.2)
    assert not is_alive(grandchild)


@pytest.mark.skipif(sys.platform == "win32", reason="exit codes name signals on POSIX only")
def test_a_process_killed_by_a_signal_reports_that_signal_not_a_cancel(tmp_path):
    """The out-of-memory killer sends SIGKILL, as stop() does; only stop() may report None."""
    script = tmp_path / "killed.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    collector = Collector()
    collector.process.start([sys.executable, str(script)])
    collector.waitFor(lambda: collector.exitCodes)
    assert collector.exitCodes == [-9]


def is_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait unreaped where PID 1 does not reap)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            return "\tZ" not in next(l for l in status.read_text().splitlines() if l.startswith("State:"))
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_text_that_is_not_a_protocol_message_becomes_a_debug_log():
    assert parseLine('{"type": "progress", "fraction": 0.5, "message": "x"}\n')["fraction"] == 0.5
    assert parseLine("{not json")["level"] == "debug"
    assert parseLine('{"no": "type"}') == {"type": "log", "level": "debug", "message": '{"no": "type"}'}


def test_a_request_survives_its_json_round_trip(tmp_path):
    request = worker.Request(ct=tmp_path / "ct.nrrd", points=[(1.0, 2.0, 3.0)], out_dir=tmp_path / "out",
                             space="lps", bundle=tmp_path / "b", device="cpu", source="volume 'CT'")
    assert worker.Request.from_json(json.loads(json.dumps(request.to_json()))) == request


def test_the_real_report_writer_produces_the_files_the_result_lists(tmp_path, small_ct):
    pytest.importorskip("LungNoduleExplainLib.reports")
    code, messages = run_in_process(write_request(tmp_path, small_ct, source="volume 'CT'"),
                                    findings_writer=worker._default_findings_writer)
    assert code == 0, messages[-1]
    result = messages[-1]
    text = Path(result["report"]).read_text()
    assert html.escape("volume 'CT'") in text or "volume 'CT'" in text
    body = json.loads(Path(result["findings"][0]).read_text())
    assert {o["name"] for o in body["outputs"]} == set(body["files"]["maps"])


# --- the request loop (--serve): one process, many requests ---------------------------------------------------

def serve_in_process(lines: list, remove_on_exit: Path | None = None, **injected) -> tuple[int, list[dict]]:
    """Run the request loop on `lines` (dicts become JSON lines) until they end, as if stdin closed."""
    stdin = io.StringIO("".join((json.dumps(l) if isinstance(l, dict) else l) + "\n" for l in lines))
    stream = io.StringIO()
    injected.setdefault("analyzer_factory", FakeAnalyzer)
    injected.setdefault("findings_writer", fake_write_findings)
    injected.setdefault("cuda_available", lambda: False)
    argv = ["--serve", *(["--remove-on-exit", str(remove_on_exit)] if remove_on_exit else [])]
    code = worker.main(argv, stream=stream, stdin=stdin, **injected)
    return code, [json.loads(line) for line in stream.getvalue().splitlines()]


def analyze_line(tmp_path: Path, ct: Path, request_id: str, **fields) -> dict:
    return {"type": "analyze", "id": request_id, "ct": str(ct), "points": [centre_ras(ct)],
            "out_dir": str(tmp_path / f"out-{request_id}"), "device": "cpu", **fields}


def counting_factory(loads: list):
    def factory(**kwargs):
        loads.append(kwargs["bundle"])
        return FakeAnalyzer(**kwargs)
    return factory


def test_the_request_loop_loads_the_model_once_and_answers_each_request_under_its_id(tmp_path, small_ct):
    loads = []
    code, messages = serve_in_process([analyze_line(tmp_path, small_ct, "1"), analyze_line(tmp_path, small_ct, "2")],
                                      analyzer_factory=counting_factory(loads))
    assert code == 0 and loads == [None]
    assert messages[0]["type"] == "ready" and messages[0]["protocol"] == 1
    finals = [m for m in messages if m["type"] in ("result", "error")]
    assert [(m["type"], m["id"]) for m in finals] == [("result", "1"), ("result", "2")]
    assert all(m.get("id") in ("1", "2") for m in messages[1:] if m["type"] == "progress")
    assert (tmp_path / "out-2" / "nodule-01" / "finding.json").is_file()


def test_a_failed_request_does_not_end_the_loop_and_bad_lines_get_clear_errors(tmp_path, small_ct):
    code, messages = serve_in_process([
        "not json", {"type": "fly", "id": "a"}, analyze_line(tmp_path, small_ct, "b", points=[]),
        {**analyze_line(tmp_path, small_ct, "c"), "ct": str(tmp_path / "gone.nrrd")},
        analyze_line(tmp_path, small_ct, "d")])
    assert code == 0
    errors = {m["id"]: m for m in messages if m["type"] == "error"}
    assert "not valid JSON" in errors[None]["message"]
    assert "'fly' is not one of 'analyze', 'load', 'exit'" in errors["a"]["message"]
    assert "'points' must be a non-empty list" in errors["b"]["message"]
    assert errors["c"]["error_type"] == "InputImageError" and "gone.nrrd is gone" in errors["c"]["message"]
    assert [m["id"] for m in messages if m["type"] == "result"] == ["d"]


def test_exit_ends_the_loop_and_a_closed_stdin_removes_the_front_ends_folder(tmp_path, small_ct):
    session = tmp_path / "session"
    (session / "run-1").mkdir(parents=True)
    (session / "ct.nrrd").write_bytes(b"patient data")
    code, messages = serve_in_process([{"type": "exit"}, analyze_line(tmp_path, small_ct, "never")], session)
    assert code == 0 and not session.exists()
    assert not any(m["type"] == "result" for m in messages), "nothing after exit is answered"


def test_a_load_request_loads_ahead_and_the_next_analysis_reuses_it(tmp_path, small_ct):
    loads = []
    _, messages = serve_in_process([{"type": "load", "id": "p", "bundle": None, "device": "cpu"},
                                    analyze_line(tmp_path, small_ct, "1")], analyzer_factory=counting_factory(loads))
    assert loads == [None]
    loaded = next(m for m in messages if m["type"] == "loaded")
    assert loaded["id"] == "p" and loaded["device"] == "cpu" and loaded["seconds"] >= 0


def test_loading_on_cuda_without_a_gpu_fails_that_request_only(tmp_path, small_ct):
    loads = []
    _, messages = serve_in_process([{"type": "load", "id": "p", "bundle": None, "device": "cuda"},
                                    analyze_line(tmp_path, small_ct, "1")], analyzer_factory=counting_factory(loads))
    error = next(m for m in messages if m["type"] == "error")
    assert error["id"] == "p" and error["error_type"] == "ConfigError" and "no CUDA GPU" in error["message"]
    assert loads == [None] and any(m["type"] == "result" and m["id"] == "1" for m in messages)


def test_a_bundle_changed_on_disk_is_loaded_and_verified_again(tmp_path, small_ct):
    """The worker outlives the user's edits to a bundle: a replaced file is noticed before the next request, and
    a bundle that no longer matches its checksums fails that request with the loader's message."""
    from conftest import untrained_bundle
    from LungNoduleExplainLib.bundle import WEIGHTS_NAME, load_bundle
    bundle = untrained_bundle(tmp_path / "bundle")
    loads = []

    def verifying_factory(**kwargs):
        loads.append(load_bundle(kwargs["bundle"]).name)
        return FakeAnalyzer(**kwargs)

    def requests():  # the bundle's weights are damaged between the two, as a user's copy might do
        yield json.dumps(analyze_line(tmp_path, small_ct, "1", bundle=str(bundle))) + "\n"
        weights = bundle / WEIGHTS_NAME
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        yield json.dumps(analyze_line(tmp_path, small_ct, "2", bundle=str(bundle))) + "\n"

    stream = io.StringIO()
    worker.main(["--serve"], stream=stream, stdin=requests(), analyzer_factory=verifying_factory,
                findings_writer=fake_write_findings, cuda_available=lambda: False)
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert loads == ["untrained-test"], "loaded once; the second load failed its checksum"
    assert any("changed on disk" in m.get("message", "") for m in messages if m["type"] == "log")
    error = next(m for m in messages if m["type"] == "error")
    assert error["id"] == "2" and error["error_type"] == "BundleError"
    assert WEIGHTS_NAME in error["message"]


def test_the_request_loop_sends_the_result_before_writing_the_report(tmp_path, small_ct):
    stdin = io.StringIO(json.dumps(analyze_line(tmp_path, small_ct, "1")) + "\n")
    stream = io.StringIO()
    worker.main(["--serve"], stream=stream, stdin=stdin, analyzer_factory=FakeAnalyzer, cuda_available=lambda: False)
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    kinds = [m["type"] for m in messages if m["type"] in ("result", "report")]
    assert kinds == ["result", "report"]
    result, report = (next(m for m in messages if m["type"] == kind) for kind in kinds)
    assert result["report"] is None and report["id"] == "1"
    assert Path(report["report"]) == tmp_path / "out-1" / "report.html" and Path(report["report"]).is_file()


# --- AnalysisWorker with a stand-in process runner (the constructor takes the runner's factory) -----------------

class FakeRunner:
    """Records starts and sent lines; the test plays the process (say, end)."""

    def __init__(self, onMessage, onFinished):
        self.onMessage, self.onFinished = onMessage, onFinished
        self.starts, self.sent, self.running = 0, [], False

    def start(self, command, env=None):
        self.starts, self.running = self.starts + 1, True

    def send(self, message):
        self.sent.append(message)

    def poll(self):
        return self.running

    def isRunning(self):
        return self.running

    def stop(self):
        if self.running:
            self.end(None)

    def end(self, code):
        self.running = False
        self.onFinished(code)


def fake_worker(tmp_path, monkeypatch):
    from LungNoduleExplainSlicer.AnalysisWorker import AnalysisWorker
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    events = []
    client = AnalysisWorker(["worker"], events.append, lambda code: events.append(("ended", code)),
                            onLog=lambda level, message: events.append((level, message)), runnerFactory=FakeRunner)
    return client, events


def test_a_request_sent_to_a_worker_dying_at_that_moment_goes_to_a_fresh_one(tmp_path, monkeypatch):
    client, events = fake_worker(tmp_path, monkeypatch)
    request_id = client.submit({"ct": "ct.nrrd"}, None, "cpu")
    client.runner.end(-9)  # it died before it said anything about the request
    assert client.runner.starts == 2 and [m["id"] for m in client.runner.sent] == [request_id, request_id]
    assert client.busy and ("warning", "the analysis process ended by itself (exit code -9) before it took the "
                                       "request; a fresh one takes it") in events
    client.runner.onMessage({"type": "progress", "id": request_id, "fraction": 0.0, "message": "Reading CT"})
    client.runner.onMessage({"type": "result", "id": request_id})
    assert not client.busy and events[-1] == {"type": "result", "id": request_id}
    client.close()


def test_a_worker_that_dies_twice_before_taking_the_request_fails_it(tmp_path, monkeypatch):
    client, events = fake_worker(tmp_path, monkeypatch)
    client.submit({"ct": "ct.nrrd"}, None, "cpu")
    client.runner.end(1)
    client.runner.end(1)  # e.g. an import error at start: no third try
    assert events[-1] == ("ended", 1) and not client.busy and client.runner.starts == 2
    client.close()


def test_a_worker_that_took_the_request_and_died_fails_it_without_a_retry(tmp_path, monkeypatch):
    client, events = fake_worker(tmp_path, monkeypatch)
    request_id = client.submit({"ct": "ct.nrrd"}, None, "cpu")
    client.runner.onMessage({"type": "progress", "id": request_id, "fraction": 0.1, "message": "segmenting"})
    client.runner.end(-9)  # the out-of-memory killer, during the analysis
    assert events[-1] == ("ended", -9) and client.runner.starts == 1
    client.close()


class PipeFrontEnd:
    """A front end over a real pipe: request 1 at once, request 2 on `send("2")` (or as soon as result 1 arrives,
    with second_on_result), hanging up after report 2; `seen` is (type, id) of every message, in order."""

    def __init__(self, tmp_path: Path, ct: Path, second_on_result: bool):
        read_end, write_end = os.pipe()
        self.stdin, self.requests = os.fdopen(read_end, "r"), os.fdopen(write_end, "w", buffering=1)
        self.tmp_path, self.ct, self.second_on_result, self.seen = tmp_path, ct, second_on_result, []
        self.send("1")

    def send(self, request_id: str) -> None:
        self.requests.write(json.dumps(analyze_line(self.tmp_path, self.ct, request_id)) + "\n")

    def write(self, text: str) -> None:
        for line in text.splitlines():
            message = json.loads(line)
            self.seen.append((message["type"], message.get("id")))
            if self.second_on_result and message["type"] == "result" and message["id"] == "1":
                self.send("2")
            if message["type"] == "report" and message["id"] == "2":
                self.requests.close()

    def flush(self) -> None:
        pass

    def serve(self) -> list:
        """Run the worker's loop until the front end hangs up; the results and reports, in order."""
        from LungNoduleExplainLib.worker import MessageWriter
        from LungNoduleExplainLib.worker_loop import serve

        with self.stdin:
            serve([], MessageWriter(self), self.stdin, analyzer_factory=FakeAnalyzer, cuda_available=lambda: False)
        return [s for s in self.seen if s[0] in ("result", "report")]


def test_a_request_that_waits_is_answered_before_the_previous_results_report(tmp_path, small_ct):
    """The report (overlays, report.html) is written once no request waits: a click made as soon as the previous
    result is shown does not wait for that result's report, and every report still comes."""
    ends = PipeFrontEnd(tmp_path, small_ct, second_on_result=True).serve()
    assert ends == [("result", "1"), ("result", "2"), ("report", "1"), ("report", "2")]
    assert all((tmp_path / f"out-{n}" / "report.html").is_file() for n in ("1", "2"))


def test_a_request_that_comes_while_a_report_is_written_stops_it_and_the_report_is_written_after(
        tmp_path, small_ct, monkeypatch):
    """The report stops between two overlays when a click comes, and is written whole once the click is answered."""
    from LungNoduleExplainLib.reports import overlays

    front_end = PipeFrontEnd(tmp_path, small_ct, second_on_result=False)
    renders = []
    real_render = overlays.OverlayRenderer.render

    def render(self, *args, **kwargs):  # the first overlay of report 1 is when the user clicks again
        renders.append(len(front_end.seen))
        if len(renders) == 1:
            front_end.send("2")
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(overlays.OverlayRenderer, "render", render)
    ends = front_end.serve()
    assert ends == [("result", "1"), ("result", "2"), ("report", "1"), ("report", "2")]
    assert renders[1] > front_end.seen.index(("result", "2")), "report 1 stopped after its first overlay"
    for n in ("1", "2"):
        assert (tmp_path / f"out-{n}" / "report.html").is_file()
        assert not list((tmp_path / f"out-{n}").rglob(".*.tmp*"))
