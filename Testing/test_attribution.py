"""Map methods, logit terms, map post-processing and the map scale of a bundle (attribution.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from LungNoduleExplainLib import attribution as A
from LungNoduleExplainLib.bundle import default_bundle_path, load_bundle
from LungNoduleExplainLib.errors import BundleError
from LungNoduleExplainLib.finding import OutputResult
from LungNoduleExplainLib.networks.hesam import HESAM
from LungNoduleExplainLib.reports.html import evidence_sentence

SPACING_ZYX = (1.25, 0.7, 0.7)


def _nodule_patch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bright 10 mm ball in a VOI-like box of lung texture, air outside: image, prior [1, 1, 32, 64, 64]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((32, 64, 64), SPACING_ZYX)), indexing="ij")
    ball = (z - 20) ** 2 + (y - 22) ** 2 + (x - 22) ** 2 <= 25
    image = np.zeros((32, 64, 64), np.float32)
    image[10:22, 8:56, 8:56] = 0.1 + 0.05 * rng.random((12, 48, 48))
    image[ball] = 0.8
    return (torch.from_numpy(image)[None, None], torch.from_numpy(ball.astype(np.float32))[None, None],
            ball)


@pytest.fixture(scope="module")
def member() -> HESAM:
    return load_bundle().model.members[0].eval()


def _descriptors(net: HESAM) -> torch.Tensor:
    return torch.linspace(-1, 1, 40)[None] * 3


def test_logit_terms_add_up_to_the_logit_of_every_output(member: HESAM) -> None:
    image, prior, _ = _nodule_patch()
    d = _descriptors(member)
    with torch.no_grad():
        logits = member(image, prior, d)
        terms = A.logit_terms(member, image, prior, d)
    assert set(terms) == set(A.LOGIT_TERMS)
    torch.testing.assert_close(sum(terms.values()), logits, atol=1e-4, rtol=1e-5)
    assert float(terms["descriptors"].abs().sum()) > 0  # the shipped network reads descriptors


def test_contribution_map_sums_to_the_mapped_image_term(member: HESAM) -> None:
    image, prior, _ = _nodule_patch()
    d = _descriptors(member)
    with torch.no_grad():
        terms = A.logit_terms(member, image, prior, d)
    with torch.inference_mode():  # as Analyzer.analyze runs it
        maps = A.contribution_maps(member, image, prior, d)
    assert maps.shape == (1, 8, 32, 64, 64)
    torch.testing.assert_close(maps.sum(dim=(2, 3, 4)), terms["image_map"], atol=1e-4, rtol=1e-4)


def test_maps_of_a_randomised_network_differ_from_the_trained_ones(member: HESAM) -> None:
    image, prior, _ = _nodule_patch()
    d = _descriptors(member)
    trained = A.member_maps(member, image, prior, d, "contribution")
    heads_random = A.member_maps(A.randomised_copy(member, 0), image, prior, d, "contribution")
    all_random = A.member_maps(A.randomised_copy(member, len(A.CASCADE) - 1), image, prior, d, "contribution")
    for other in (heads_random, all_random):
        rho = [stats.spearmanr(trained[k].ravel(), other[k].ravel())[0] for k in range(8)]
        assert np.nanmedian(rho) < 0.5, rho
    # the copy re-initialised the modules of its stages and kept the others
    copy = A.randomised_copy(member, 0)
    assert not torch.equal(copy.diagnosis_head.fc.weight, member.diagnosis_head.fc.weight)
    assert all(torch.equal(a, b) for a, b in zip(copy.stem.parameters(), member.stem.parameters()))


def test_mask_maps_zeroes_outside_and_keeps_inside() -> None:
    maps = np.random.default_rng(0).random((2, 4, 5, 6)).astype(np.float32)
    keep = np.zeros((4, 5, 6), bool)
    keep[1:3, 1:4, 2:5] = True
    out = A.mask_maps(maps, keep)
    assert np.all(out[:, ~keep] == 0) and np.array_equal(out[:, keep], maps[:, keep])
    with pytest.raises(ValueError, match="does not match"):
        A.mask_maps(maps, keep[:3])


def test_edge_zone_is_padding_plus_the_outer_width_of_the_visible_box() -> None:
    visible = np.zeros((10, 20, 20), bool)
    visible[2:8, 5:15, 5:15] = True
    edge = A.edge_zone(visible, 1.5, SPACING_ZYX)
    assert np.all(edge[~visible])
    # in-plane 0.7 mm voxels: the outer two visible columns lie within 1.5 mm (0.7, 1.4), the third (2.1) not
    assert edge[4, 10, 5] and edge[4, 10, 6] and not edge[4, 10, 7]
    # z 1.25 mm: only the outermost visible slice
    assert edge[2, 10, 10] and not edge[3, 10, 10]
    # a box that reaches the patch border has its edge there too
    full = np.ones((10, 20, 20), bool)
    assert A.edge_zone(full, 1.5, SPACING_ZYX)[5, 10, 0] and not A.edge_zone(full, 1.5, SPACING_ZYX)[5, 10, 10]


def test_within_mm_dilates_by_a_physical_distance() -> None:
    mask = np.zeros((5, 11, 11), bool)
    mask[2, 5, 5] = True
    grown = A.within_mm(mask, 2.0, SPACING_ZYX)
    assert grown[2, 5, 7] and not grown[2, 5, 8]  # 1.4 mm in, 2.1 mm out
    assert grown[3, 5, 5] and not grown[4, 5, 5]  # 1.25 in, 2.5 out


def test_displayed_maps_use_the_reference_scale_clip_and_average_members(member: HESAM) -> None:
    image, prior, ball = _nodule_patch()
    d = _descriptors(member)
    visible = image[0, 0].numpy() > 0
    raw = A.mask_maps(A.member_maps(member, image, prior, d, "contribution"), visible)
    peak = raw.reshape(8, -1).max(1)
    one = torch.nn.ModuleList([member])
    model = type("Two", (), {"members": [member, member]})()
    scales = np.stack([peak / 2, peak / 2])
    shown = A.displayed_maps(model, image, prior, d, visible, "contribution", scales)
    assert shown.max() <= 1.0 and np.all(shown[:, ~visible] == 0)
    expected = np.clip(raw / (peak / 2).reshape(-1, 1, 1, 1), 0, 1)
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    unscaled = A.displayed_maps(one[0], image, prior, d, visible, "contribution", None)
    np.testing.assert_allclose(unscaled.reshape(8, -1).max(1)[peak > 0], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="2 members"):
        A.displayed_maps(one[0], image, prior, d, visible, "contribution", scales)


def _scale_document(names: list[str], members: int) -> dict:
    return {"format_version": A.MAP_SCALE_FORMAT, "methods": {"contribution": {n: [0.5] * members for n in names}}}


def test_read_map_scale_refuses_what_does_not_fit_the_bundle() -> None:
    names = ["malignant", "calcified"]
    assert A.read_map_scale(_scale_document(names, 3), names, 3, "x")["contribution"].shape == (3, 2)
    bad_method = {"format_version": 1, "methods": {"saliency": {n: [1.0] * 3 for n in names}}}
    with pytest.raises(BundleError, match="unknown map method 'saliency'"):
        A.read_map_scale(bad_method, names, 3, "x")
    with pytest.raises(BundleError, match="exactly the outputs"):
        A.read_map_scale(_scale_document(["malignant"], 3), names, 3, "x")
    zero = _scale_document(names, 3)
    zero["methods"]["contribution"]["malignant"] = [0.0, 1.0, 1.0]
    with pytest.raises(BundleError, match="positive scales"):
        A.read_map_scale(zero, names, 3, "x")


def test_a_bundle_gains_a_checksummed_map_scale_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    from LungNoduleExplainLib.bundle import add_map_scale

    folder = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), folder, ignore=shutil.ignore_patterns(A.MAP_SCALE_NAME))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"].pop(A.MAP_SCALE_NAME, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(folder).map_scales is None  # absent: maps min-max per patch
    bundle = load_bundle(folder)
    add_map_scale(folder, _scale_document(bundle.output_names, bundle.members))
    assert load_bundle(folder).map_scales["contribution"].shape == (bundle.members, len(bundle.output_names))
    (folder / A.MAP_SCALE_NAME).write_text(json.dumps(_scale_document(bundle.output_names, bundle.members))
                                           .replace("0.5", "0.7"))
    with pytest.raises(BundleError, match="checksum mismatch for map_scale.json"):
        load_bundle(folder)


def test_finding_json_and_report_say_how_much_comes_from_descriptors() -> None:
    terms = {"image_map": 0.5, "image_global": -0.5, "descriptors": 3.0, "bias": -1.0}
    output = OutputResult("malignant", "diagnosis", "d", 0.9, 0.5, activation_map=None, logit_terms=terms)
    assert output.descriptor_share == pytest.approx(0.75)
    assert evidence_sentence(output).startswith("75% of this output's evidence comes from size/shape/density")
    bare = OutputResult("malignant", "diagnosis", "d", 0.9, 0.5, activation_map=None)
    assert bare.descriptor_share is None and evidence_sentence(bare) == ""
    legend = A.map_display("contribution", True)
    assert legend["scale"] == "reference" and "strongest 5% of held-out" in legend["legend"]
    assert A.map_display("sam", False)["scale"] == "per-patch"
