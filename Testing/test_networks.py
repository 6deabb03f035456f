"""Shapes, SAM maps and AAG gating of every network variant (CPU, tiny widths, small inputs)."""

from __future__ import annotations

import pytest
import torch

from LungNoduleExplainLib.networks import VARIANTS, NetworkConfig, build_network
from LungNoduleExplainLib.networks.blocks import AnatomicalAttentionGate, SoftActivationMapping
from LungNoduleExplainLib.networks.hesam import HESAM

K = 3
SHAPE = (2, 1, 16, 32, 32)  # [B, C, D, H, W]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_gives_one_logit_per_output_and_maps_of_input_size_in_unit_range(variant: str) -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(variant, (4, 4, 8, 8)), K).eval()
    image, prior = torch.rand(SHAPE), torch.rand(SHAPE)
    n_outputs = 1 if variant == "hesam" else 1 + K
    with torch.no_grad():
        logits = net(image, prior)
        logits2, maps = net.activation_maps(image, prior)
    assert logits.shape == (2, n_outputs)
    assert torch.allclose(logits, logits2, atol=1e-5)
    assert maps.shape == (2, n_outputs, *SHAPE[2:])
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    peaks = maps.amax(dim=(2, 3, 4))
    assert bool(((peaks > 0.99) | (peaks == 0)).all())  # min-max normalised: 1 at the peak, or all zero (ReLU)


def test_two_input_channels_feed_every_variant() -> None:
    for variant in VARIANTS:
        net = build_network(NetworkConfig(variant, (4, 4, 8, 8), inputs=("percentile", "hu-window")), K).eval()
        with torch.no_grad():
            assert net(torch.rand(1, 2, *SHAPE[2:]), torch.rand(1, *SHAPE[1:])).shape[0] == 1, variant


def test_descriptors_add_a_global_term_to_the_logits_but_leave_the_maps_alone() -> None:
    from LungNoduleExplainLib.descriptors import DESCRIPTOR_SETS
    torch.manual_seed(0)
    config = NetworkConfig("hesam-mt-aag", (4, 4, 8, 8), descriptors=True)
    net = build_network(config, K).eval()
    n = len(DESCRIPTOR_SETS["shape-density"])
    assert config.n_descriptors == n and {"descriptor_mean", "descriptor_std"} <= set(net.state_dict())
    image, prior = torch.rand(SHAPE), torch.rand(SHAPE)
    net.set_descriptor_statistics(torch.full((n,), 2.0), torch.zeros(n))  # a constant descriptor gets std 1
    assert torch.equal(net.descriptor_std, torch.ones(n))
    with torch.no_grad():
        a_logits, a_maps = net.activation_maps(image, prior, torch.zeros(2, n))
        b_logits, b_maps = net.activation_maps(image, prior, torch.ones(2, n))
        with pytest.raises(ValueError, match="needs nodule descriptors"):
            net(image, prior)
        with pytest.raises(ValueError, match="needs nodule descriptors"):
            net(image, prior, torch.zeros(2, n - 1))
    assert not torch.allclose(a_logits, b_logits)
    assert torch.allclose(a_maps, b_maps)


def test_a_network_reads_the_first_descriptors_of_its_set_only() -> None:
    from LungNoduleExplainLib.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_SETS
    for name, names in DESCRIPTOR_SETS.items():  # sets grow by appending, so old bundles keep their columns
        assert DESCRIPTOR_NAMES[:len(names)] == names, name
    torch.manual_seed(0)
    image, prior = torch.rand(SHAPE), torch.rand(SHAPE)
    everything = torch.rand(2, len(DESCRIPTOR_NAMES))
    changed = everything.clone()
    changed[:, -1] += 5.0  # the last outline descriptor
    for name, sees_it in (("shape-density", False), ("shape-density-outline", True)):
        config = NetworkConfig("hesam-mt-aag", (4, 4, 8, 8), descriptors=True, descriptor_set=name)
        net = build_network(config, K).eval()
        net.set_descriptor_statistics(everything.mean(0), everything.std(0))
        assert net.descriptor_mean.shape == (len(DESCRIPTOR_SETS[name]),)
        with torch.no_grad():
            assert torch.allclose(net(image, prior, everything), net(image, prior, changed)) != sees_it, name


def test_descriptors_need_a_variant_with_a_prior() -> None:
    from LungNoduleExplainLib.errors import ConfigError
    for variant in ("hesam", "hesam-mt", "vgg"):
        with pytest.raises(ConfigError, match="descriptors describe the prior region"):
            NetworkConfig(variant, descriptors=True)


def test_batch_of_one_works_in_eval_mode() -> None:
    net = build_network(NetworkConfig("hesam-mt-aag", (4, 4, 8, 8)), K).eval()
    with torch.no_grad():
        assert net(torch.rand(1, *SHAPE[1:]), torch.rand(1, *SHAPE[1:])).shape == (1, 1 + K)


def test_prior_changes_the_output_only_for_variants_that_use_it() -> None:
    torch.manual_seed(0)
    image = torch.rand(SHAPE)
    for variant, uses_prior in (("hesam-mt", False), ("hesam-mt-aag", True), ("hesam-mt-cbam", True)):
        net = build_network(NetworkConfig(variant, (4, 4, 8, 8)), K).eval()
        with torch.no_grad():
            a = net(image, torch.zeros(SHAPE))
            b = net(image, torch.ones(SHAPE))
        assert (not torch.allclose(a, b)) == uses_prior, variant


def test_aag_sum_mode_is_gated_sum_of_image_and_roi_features() -> None:
    torch.manual_seed(0)
    gate = AnatomicalAttentionGate(4, "sum")
    x, r = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    with torch.no_grad():
        g1, g2 = gate.gates(x, r)
    assert float(g1.min()) > 0 and float(g1.max()) < 1 and float(g2.min()) > 0 and float(g2.max()) < 1
    assert torch.allclose(gate(x, r), g1 * x + g2 * r)


def test_aag_weighted_mode_starts_with_half_weight_on_roi_and_cat_mode_keeps_channels() -> None:
    x, r = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    weighted = AnatomicalAttentionGate(4, "weighted")
    g1, g2 = weighted.gates(x, r)
    assert torch.allclose(weighted(x, r), g1 * x + 0.5 * g2 * r)
    assert AnatomicalAttentionGate(4, "cat")(x, r).shape == x.shape
    with pytest.raises(ValueError, match="AAG mode"):
        AnatomicalAttentionGate(4, "max")


def test_sam_is_a_per_channel_spatial_linear_layer_over_a_6x6x6_grid() -> None:
    sam = SoftActivationMapping(channels=3)
    assert sam.weight.shape == (3, 216) and sam.bias.shape == (3,)
    features = torch.randn(2, 3, 12, 12, 12)
    pooled = torch.nn.functional.adaptive_avg_pool3d(features, 6).flatten(2)
    expected = (pooled * sam.weight).sum(-1) + sam.bias
    assert torch.allclose(sam(features), expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["hesam", "hesam-mt-aag"])
def test_hesam_map_of_output_k_is_the_normalised_relu_of_the_fc_weighted_head_features(variant: str) -> None:
    torch.manual_seed(2)  # a seed where every map below has both signs before the ReLU (checked, not assumed)
    net = build_network(NetworkConfig(variant, (4, 4, 8, 8)), K).eval()
    heads = [net.diagnosis_head] + ([net.manifestation_head] if net.manifestation_head is not None else [])
    features: dict[int, torch.Tensor] = {}  # each head's F, caught where its residual units give it
    for i, head in enumerate(heads):
        head.features.register_forward_hook(lambda module, args, out, i=i: features.__setitem__(i, out))
        with torch.no_grad():  # weights of both signs and unit scale, so that every map has a part the ReLU cuts
            head.fc.weight.normal_()
    image, prior = torch.rand(SHAPE), torch.rand(SHAPE)
    with torch.no_grad():
        _, maps = net.activation_maps(image, prior)
    expected = []
    for i, head in enumerate(heads):
        cam = torch.einsum("bcdhw,kc->bkdhw", features[i], head.fc.weight.detach())  # sum_c W[k, c] F[c]
        assert bool(((cam < 0).flatten(2).any(-1) & (cam > 0).flatten(2).any(-1)).all())  # the ReLU cuts each map
        cam = torch.nn.functional.interpolate(cam.clamp_min(0), size=SHAPE[2:], mode="trilinear", align_corners=False)
        lo, hi = cam.amin(dim=(2, 3, 4), keepdim=True), cam.amax(dim=(2, 3, 4), keepdim=True)
        assert bool((hi > lo).all())  # no all-zero map, whose normalisation would hide a wrong formula
        expected.append((cam - lo) / (hi - lo))
    expected_maps = torch.cat(expected, dim=1)
    assert expected_maps.shape == maps.shape == (2, 1 + (K if variant != "hesam" else 0), *SHAPE[2:])
    torch.testing.assert_close(maps, expected_maps, atol=1e-5, rtol=0)


def test_hesam_rejects_a_missing_prior_and_wrong_widths() -> None:
    with pytest.raises(ValueError, match="needs a prior"):
        HESAM(K, (4, 4, 8, 8), "aag")(torch.rand(SHAPE), None)
    with pytest.raises(ValueError, match="4 widths"):
        HESAM(K, (4, 8, 8))


def test_unknown_variant_is_a_config_error_naming_the_choices() -> None:
    from LungNoduleExplainLib.errors import ConfigError
    with pytest.raises(ConfigError, match="hesam-mt-aag"):
        NetworkConfig("transformer")


def test_the_registry_says_what_each_variant_is_and_every_list_derives_from_it(monkeypatch) -> None:
    from LungNoduleExplainLib import network_config
    from LungNoduleExplainLib.cli import build_parser
    from LungNoduleExplainLib.networks import BUILDERS

    assert network_config.PRIOR_VARIANTS == ("hesam-mt-cbam", "hesam-mt-aag")
    assert {v.family for v in VARIANTS.values()} == set(BUILDERS)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    variant_flag = next(a for a in train._actions if a.dest == "variant")
    assert list(variant_flag.choices) == list(VARIANTS)
    for name, spec in VARIANTS.items():  # the phase-1 check reads separate_heads: the networks must agree
        net = build_network(NetworkConfig(name, (4, 4, 8, 8)), K)
        assert hasattr(net, "diagnosis_head") == spec.separate_heads, name
    # a new variant is one registry line (and a builder for a new family)
    monkeypatch.setitem(VARIANTS, "vgg-wide", network_config.Variant("wider VGG", "vgg"))
    net = build_network(NetworkConfig("vgg-wide", (8, 8, 16, 16)), K)
    assert net(torch.rand(SHAPE), None).shape == (2, 1 + K)


def test_train_flags_default_to_the_training_config() -> None:
    from LungNoduleExplainLib.cli import build_parser
    from LungNoduleExplainLib.train_config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    config = TrainConfig()
    assert (args.epochs, args.phase1_epochs, args.batch_size, args.lr, args.plateau_patience,
            args.early_stop_patience, args.seed) == (config.max_epochs, config.phase1_epochs, config.batch_size,
                                                    config.lr, config.plateau_patience, config.early_stop_patience,
                                                    config.seed)
