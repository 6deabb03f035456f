"""Network configuration without torch: variant names, widths, inputs (so command-line parsers stay fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError



@dataclass(frozen=True)
class Variant:
    """What a network variant is, without torch: the builder family (networks.BUILDERS), whether its gates take
    the prior map (and how), whether it predicts the manifestations, whether it has a separate diagnosis head
    (which phase 1 of the cascade freezes)."""

    description: str
    family: str
    prior_mode: str = "none"  # "aag" or "cbam": spatial gates fed by the prior; "none": image only
    multitask: bool = True
    separate_heads: bool = False

    @property
    def uses_prior(self) -> bool:
        return self.prior_mode != "none"


# The registry every list of variants derives from (CLI choices, prior variants, the phase-1 check); the paper's
# ablation order first. A new variant: one line here, and a builder in networks.BUILDERS for a new family.
VARIANTS: dict[str, Variant] = {
    "hesam": Variant("HESAM alone: single task (diagnosis only), no prior", "hesam", multitask=False,
                     separate_heads=True),
    "hesam-mt": Variant("HESAM + multitask", "hesam", separate_heads=True),
    "hesam-mt-cbam": Variant("HESAM + multitask + CBAM spatial gates fed by the prior", "hesam", "cbam",
                             separate_heads=True),
    "hesam-mt-aag": Variant("HESAM + multitask + anatomical attention gates (the paper's full model)", "hesam",
                            "aag", separate_heads=True),
    "vgg": Variant("3D VGG baseline (image only)", "vgg"),
    "resnet": Variant("3D ResNet baseline (image only)", "resnet"),
    "densenet": Variant("3D DenseNet baseline (image only)", "densenet"),
}
PRIOR_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.uses_prior)  # gates that take the prior map
DEFAULT_VARIANT = "hesam-mt-aag"
# Width that trains on 2 CPU cores in reasonable time; the authors use (64, 128, 256, 512).
DEFAULT_FEATURES: tuple[int, int, int, int] = (8, 16, 32, 64)
AUTHORS_FEATURES: tuple[int, int, int, int] = (64, 128, 256, 512)
# descriptors.DESCRIPTOR_SETS name; also what bundles without the field (up to v9) were trained with.
DEFAULT_DESCRIPTOR_SET = "shape-density"


@dataclass
class NetworkConfig:
    """What `build_network` needs; saved in every bundle and run."""

    variant: str = DEFAULT_VARIANT
    features: tuple[int, ...] = DEFAULT_FEATURES
    aag_mode: str = "sum"
    stem_stride: int = 2
    # Image channels the network takes (see patch.INPUT_CHANNELS); the authors use the percentile image only. The
    # default is what a manifest without the field means (bundles v1-v10 read it); `train --inputs` defaults to
    # "percentile-voi", METHOD.md's order.
    inputs: tuple[str, ...] = ("percentile",)
    # Nodule descriptors (descriptors.py) beside each head; off in the authors' network, on in the shipped model.
    descriptors: bool = False
    # Which descriptors (descriptors.DESCRIPTOR_SETS); bundles without the field were trained with the default.
    descriptor_set: str = DEFAULT_DESCRIPTOR_SET

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown network variant {self.variant!r}; expected one of {list(VARIANTS)}")
        self.features = tuple(int(f) for f in self.features)
        from .patch import INPUT_CHANNELS
        self.inputs = tuple(self.inputs)
        unknown = [c for c in self.inputs if c not in INPUT_CHANNELS]
        if unknown or not self.inputs:
            raise ConfigError(f"network inputs {list(self.inputs)}: expected a non-empty subset of {INPUT_CHANNELS}")
        if self.descriptors and not self.uses_prior:
            raise ConfigError(f"nodule descriptors describe the prior region; variant {self.variant!r} takes no "
                              "prior (use hesam-mt-aag or hesam-mt-cbam, or turn descriptors off)")
        from .descriptors import DESCRIPTOR_SETS
        if self.descriptor_set not in DESCRIPTOR_SETS:
            raise ConfigError(f"unknown descriptor set {self.descriptor_set!r}; expected one of "
                              f"{list(DESCRIPTOR_SETS)}")

    @property
    def n_descriptors(self) -> int:
        from .descriptors import DESCRIPTOR_SETS
        return len(DESCRIPTOR_SETS[self.descriptor_set]) if self.descriptors else 0

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def multitask(self) -> bool:
        return self.spec.multitask

    @property
    def uses_prior(self) -> bool:
        return self.spec.uses_prior

    def to_dict(self) -> dict:
        return asdict(self)
