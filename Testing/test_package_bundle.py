"""`lungnodule-explain package-bundle`: the shipped bundle repackaged as a new version keeps its weights,
calibration and map scale, gets a card that says how it was made, and follows the output-folder rule."""

from __future__ import annotations

import json

from LungNoduleExplainLib.bundle import default_bundle_path, load_bundle
from LungNoduleExplainLib.cli import main


def test_package_bundle_repackages_a_bundle_with_its_calibration_map_scale_and_card(tmp_path):
    out = tmp_path / "bundle"
    assert main(["--quiet", "package-bundle", "--run", str(default_bundle_path()), "--out", str(out),
                 "--bundle-version", "99", "--note", "a test"]) == 0
    bundle, shipped = load_bundle(out), load_bundle(default_bundle_path())  # checksums verified on load
    assert bundle.version == "99" and bundle.name == shipped.name
    assert (out / "classifier.safetensors").read_bytes() == (default_bundle_path() / "classifier.safetensors").read_bytes()
    assert bundle.calibrated and bundle.map_scales is not None
    assert bundle.segmentation_dir is None  # none given
    card = (out / "MODEL_CARD.md").read_text()
    assert f"# Model card: {shipped.name} v99" in card
    assert "Made with: `lungnodule-explain package-bundle --run" in card and "(a test)" in card
    assert json.loads((out / ".lungnodule-explain").read_text())["verb"] == "package-bundle"


def test_package_bundle_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    assert main(["package-bundle", "--run", str(default_bundle_path()), "--out", str(out), "--overwrite"]) == 2
    assert "--overwrite replaces only a folder that lungnodule-explain wrote" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
