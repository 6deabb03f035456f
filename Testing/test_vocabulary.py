"""One vocabulary (vocabulary.py) and one device rule (devices.choose_device): every face takes its names from
them, and what cannot import Python (the CLI module's XML, the module's .ui) is checked against them here."""

from __future__ import annotations

import ast
import logging
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO_ROOT
from LungNoduleExplainLib import cli
from LungNoduleExplainLib.devices import CPU_FALLBACK_NOTE, choose_device, resolve_device
from LungNoduleExplainLib.errors import ConfigError
from LungNoduleExplainLib.network_config import VARIANTS
from LungNoduleExplainLib.train_config import default
from LungNoduleExplainLib.vocabulary import Device, PointSpace, Prior
from LungNoduleExplainLib.worker import Request, RequestError

MODULE_DIR = REPO_ROOT / "LungNoduleExplain"
CLI_XML = REPO_ROOT / "LungNoduleExplainTraining" / "LungNoduleExplainTraining.xml"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LungNoduleExplain.ui"


def no_gpu() -> bool:
    return False


def a_gpu() -> bool:
    return True


# --- the names ---------------------------------------------------------------------------------------------------

def test_the_spellings_are_the_public_ones():
    """Flags, request JSON and manifests use them: they may grow, never change."""
    assert Device.names() == ("auto", "cpu", "cuda")
    assert PointSpace.names() == ("ras", "lps", "ijk")
    assert Prior.names() == ("reference-mask", "nnunet-oof")


def test_a_name_is_its_plain_string():
    assert Device.CPU == "cpu" and str(Device.CPU) == "cpu" and f"{PointSpace.LPS}" == "lps"
    assert Device.listed() == "auto, cpu or cuda"
    assert all(space.meaning for space in PointSpace)


# --- the one device rule -----------------------------------------------------------------------------------------

def test_auto_takes_the_gpu_when_there_is_one_and_says_nothing():
    assert choose_device(Device.AUTO, a_gpu) == ("cuda", None)
    assert choose_device(None, a_gpu) == ("cuda", None)


def test_auto_without_a_gpu_runs_on_the_cpu_and_says_so():
    assert choose_device("auto", no_gpu) == ("cpu", CPU_FALLBACK_NOTE)


def test_cpu_is_the_cpu_without_asking_for_cuda():
    def must_not_ask() -> bool:
        raise AssertionError("cpu needs no CUDA check (nor torch)")

    assert choose_device("cpu", must_not_ask) == ("cpu", None)


def test_cuda_is_the_gpu_when_there_is_one():
    assert choose_device("cuda", a_gpu) == ("cuda", None)
    assert choose_device("cuda:1", a_gpu) == ("cuda:1", None)  # torchrun's processes


@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_an_error_that_says_what_to_choose(requested):
    with pytest.raises(ConfigError, match="no CUDA GPU") as raised:
        choose_device(requested, no_gpu)
    assert "'auto'" in str(raised.value) and "'cpu'" in str(raised.value)


@pytest.mark.parametrize("requested", ["tpu", "CUDA", "cuda:x", "gpu", ""])
def test_an_unknown_device_is_an_error_naming_the_choices(requested):
    with pytest.raises(ConfigError, match="expected auto, cpu or cuda"):
        choose_device(requested, a_gpu)


def test_resolve_device_follows_the_rule_and_logs_the_note(monkeypatch, caplog):
    """Training, evaluation, analysis and segmentation take their torch.device from resolve_device."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", no_gpu)
    with caplog.at_level(logging.INFO, logger="LungNoduleExplainLib.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    assert CPU_FALLBACK_NOTE in caplog.messages
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_the_segmentation_training_config_takes_every_device_name():
    from LungNoduleExplainLib.segmentation.training import SegmentationTrainingConfig
    assert [SegmentationTrainingConfig(device=d).device for d in Device.names()] == list(Device.names())
    with pytest.raises(ConfigError, match="device must be one of"):
        SegmentationTrainingConfig(device="gpu")


# --- the faces take their choices from it ------------------------------------------------------------------------

def verb_parsers() -> dict:
    subparsers = next(a for a in cli.build_parser()._actions if a.dest == "verb")
    return dict(subparsers.choices)


def option(parser, flag: str):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_verb_with_a_device_offers_the_device_names():
    with_device = {verb: option(parser, "--device") for verb, parser in verb_parsers().items()}
    with_device = {verb: action for verb, action in with_device.items() if action is not None}
    assert {"analyze", "demo", "train", "evaluate", "train-segmentation"} <= set(with_device)
    for verb, action in with_device.items():
        assert tuple(action.choices) == Device.names(), verb


def test_analyze_offers_one_flag_per_point_space():
    analyze = verb_parsers()["analyze"]
    consts = {flag: option(analyze, flag).const for flag in (f"--{name}" for name in PointSpace.names())}
    assert consts == {f"--{name}": name for name in PointSpace.names()}
    assert analyze.get_default("space") == PointSpace.RAS


@pytest.mark.parametrize("field, names", [("device", Device.names()), ("space", PointSpace.names())])
def test_the_worker_request_takes_exactly_the_names(tmp_path, field, names):
    base = {"ct": str(tmp_path / "ct.nrrd"), "points": [[0, 0, 0]], "out_dir": str(tmp_path / "out")}
    assert [getattr(Request.from_json({**base, field: name}), field) for name in names] == list(names)
    with pytest.raises(RequestError, match=f"'{field}' is 'other'"):
        Request.from_json({**base, field: "other"})


def test_the_slicer_parameter_node_offers_the_device_names_and_the_ui_restates_none():
    tree = ast.parse((MODULE_DIR / "LungNoduleExplain.py").read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode"))
    device = next(s for s in node.body if isinstance(s, ast.AnnAssign) and s.target.id == "device")
    assert "Choice(list(Device.names()))" in ast.unparse(device.annotation)
    assert ast.unparse(device.value) == "Device.AUTO.value"
    combo = next(w for w in ET.parse(UI_FILE).getroot().iter("widget") if w.get("name") == "deviceComboBox")
    assert combo.findall("item") == [], "the parameter node's Choice fills the combo box (QComboBoxToStringable)"


# --- the CLI module's XML, which cannot import Python ------------------------------------------------------------

def xml_parameter(name: str) -> ET.Element:
    root = ET.parse(CLI_XML).getroot()
    return next(p for group in root.findall("parameters") for p in group if p.findtext("name") == name)


def test_the_cli_module_xml_lists_the_device_names_and_the_network_variants():
    assert tuple(e.text for e in xml_parameter("device").findall("element")) == Device.names()
    variants = [e.text for e in xml_parameter("variant").findall("element")]
    assert sorted(variants) == sorted(VARIANTS), "every variant once (in the order Slicer users read them)"


@pytest.mark.parametrize("name", ["tasks", "variant", "epochs", "members", "device"])
def test_each_cli_module_xml_default_is_the_engine_train_verb_default(name):
    """Slicer passes the XML's defaults: they must be what `lungnodule-explain train` uses without the flag."""
    engine = verb_parsers()["train"].parse_args(["--data", "d", "--out", "o"])
    value = getattr(engine, name)
    assert xml_parameter(name).findtext("default") == str(value)


def test_the_cli_module_epochs_default_is_train_configs():
    assert int(xml_parameter("epochs").findtext("default")) == default("max_epochs")
