"""Where an output's evidence lies, beside the paper's SAM map: exact logit terms, the SAM contribution map,
Grad-CAM, occlusion, masking to what the network saw, and the randomised-network sanity check.

One HESAM network (an ensemble member) gives, per output k,

    logit_k = image_map_k + image_global_k + descriptors_k + bias_k

image_map: W_fc[k] . (SAM(F) - b_sam), the part of the image term that the head's feature map F carries through the
SAM layer (the only part any map of F can show); image_global: W_fc[k] . GMP(deepest encoder features), image
evidence pooled over the whole patch by a global max; descriptors: the linear term of the standardised nodule
descriptors (size, shape, HU; zero for a nodule at the training mean); bias: b_fc[k] + W_fc[k] . b_sam.

Maps are arrays [n_outputs, D, H, W] on the patch grid. The paper's map ReLU(sum_c W_fc[k, c] F[c]) leaves out the
SAM layer's learned spatial weights (each channel has its own weight per 6x6x6 cell), so it can light places the
logit ignores; the contribution map puts the SAM weights back: its voxels sum to image_map exactly (the term is
linear in F, so gradient x input is exact).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F

from .explain import DEFAULT_MAP_METHOD, MAP_METHODS
from .networks.hesam import HESAM, SAMHead

LOGIT_TERMS = ("image_map", "image_global", "descriptors", "bias")
# Randomisation cascade of Adebayo et al. (2018), top (logits) down to the input; names of HESAM's modules.
CASCADE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("heads: fc + descriptors", ("diagnosis_head.fc", "manifestation_head.fc", "diagnosis_head.descriptor_fc",
                                 "manifestation_head.descriptor_fc")),
    ("heads: SAM + deep projection", ("diagnosis_head.sam", "manifestation_head.sam",
                                      "diagnosis_head.deep_projection", "manifestation_head.deep_projection")),
    ("heads: residual units", ("diagnosis_head.features", "manifestation_head.features")),
    ("decoder", ("decoder_out", "ups")),
    ("encoder: gates + prior branch", ("gates", "roi_downs", "roi_stem")),
    ("encoder: downs", ("downs",)),
    ("stem", ("stem",)),
)


def _heads(net: HESAM) -> list[tuple[SAMHead, slice]]:
    """(head, slice of the logits it gives), diagnosis first."""
    out = [(net.diagnosis_head, slice(0, 1))]
    if net.manifestation_head is not None:
        out.append((net.manifestation_head, slice(1, 1 + net.n_manifestations)))
    return out


def mean_logit_terms(model: nn.Module, image: Tensor, prior: Tensor, descriptors: Tensor | None
                     ) -> dict[str, np.ndarray]:
    """logit_terms of every ensemble member (or the one network), averaged: {term: [n_outputs]} for one patch.
    They sum to the members' mean logit (the ensemble's own logit is that of the mean probability)."""
    members = list(getattr(model, "members", [model]))
    with torch.no_grad():
        per = [logit_terms(m, image, prior, descriptors) for m in members]
    return {k: np.mean([t[k][0].float().cpu().numpy() for t in per], axis=0) for k in LOGIT_TERMS}


def logit_terms(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None) -> dict[str, Tensor]:
    """The four additive terms of every logit (module docstring), each [B, n_outputs]; they sum to net(...)."""
    x, deep = net._backbone(image, prior)
    std = net._standardised(descriptors)
    parts: dict[str, list[Tensor]] = {name: [] for name in LOGIT_TERMS}
    for head, _ in _heads(net):
        fmap = head.features(x)
        w = head.fc.weight
        parts["image_map"].append((head.sam(fmap) - head.sam.bias) @ w.T)
        parts["image_global"].append(torch.amax(head.deep_projection(deep), dim=(2, 3, 4)) @ w.T)
        parts["bias"].append((head.fc.bias + w @ head.sam.bias).expand(image.shape[0], -1))
        parts["descriptors"].append(head.descriptor_fc(std) if head.descriptor_fc is not None
                                    else torch.zeros_like(parts["bias"][-1]))
    return {name: torch.cat(v, dim=1) for name, v in parts.items()}


def descriptor_share(terms: dict[str, np.ndarray]) -> np.ndarray:
    """|descriptors| / (|image_map| + |image_global| + |descriptors|), elementwise: how much of the evidence
    (bias aside) comes from the descriptors that no map shows."""
    d = np.abs(terms["descriptors"])
    total = d + np.abs(terms["image_map"]) + np.abs(terms["image_global"])
    return np.where(total > 0, d / np.maximum(total, 1e-12), 0.0)


def sam_raw_maps(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None) -> Tensor:
    """The paper's map before min-max: ReLU(sum_c W_fc[k, c] F[c]) upsampled, [B, n_outputs, D, H, W]."""
    _, heads = net.forward_with_features(image, prior, descriptors)
    cams = [F.relu(torch.einsum("kc,bcdhw->bkdhw", head.fc.weight, fmap)) for head, fmap in heads]
    return F.interpolate(torch.cat(cams, 1), size=tuple(image.shape[2:]), mode="trilinear", align_corners=False)


def contribution_maps(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None,
                      upsample: bool = True) -> Tensor:
    """Signed per-voxel share of image_map in logit units, [B, n_outputs, d, h, w] on the head grid (or the patch
    grid, spread evenly over the voxels each head voxel covers, when `upsample`); sums to image_map (per voxel
    of the head grid; after upsampling the sum is kept by dividing by the upsampling factor)."""
    with torch.no_grad():
        x, _ = net._backbone(image, prior)
    maps = []
    for head, _ in _heads(net):
        with torch.no_grad():
            features = head.features(x)
        # a normal tensor even under torch.inference_mode (Analyzer.analyze): the SAM term is differentiated
        with torch.inference_mode(False), torch.enable_grad():
            fmap = features.clone().requires_grad_(True)
            term = (head.sam(fmap) - head.sam.bias) @ head.fc.weight.T  # [B, n_k]
            for k in range(term.shape[1]):
                grad, = torch.autograd.grad(term[:, k].sum(), fmap, retain_graph=True)
                maps.append((grad * fmap).sum(1, keepdim=True).detach())
    out = torch.cat(maps, 1)
    if upsample:
        factor = float(np.prod(image.shape[2:]) / np.prod(out.shape[2:]))
        out = F.interpolate(out, size=tuple(image.shape[2:]), mode="nearest") / factor
    return out


def gradcam_maps(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None) -> Tensor:
    """captum LayerGradCam on each head's last feature layer (ReLU'd), upsampled trilinearly to the patch,
    [B, n_outputs, D, H, W]."""
    from captum.attr import LayerAttribution, LayerGradCam

    maps = []
    for head, outputs in _heads(net):
        cam = LayerGradCam(net, head.features)
        for k in range(outputs.start, outputs.stop):
            with torch.enable_grad():
                a = cam.attribute(image, target=k, additional_forward_args=(prior, descriptors),
                                  relu_attributions=True)
            maps.append(LayerAttribution.interpolate(a.detach(), tuple(image.shape[2:]), "trilinear"))
    return torch.cat(maps, 1)


@torch.no_grad()
def occlusion_maps(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None,
                   window: Sequence[int] = (4, 8, 8), stride: Sequence[int] = (4, 8, 8), baseline: float = 0.0,
                   batch: int = 32) -> Tensor:
    """Occlusion (Zeiler & Fergus; captum's Occlusion algorithm, all outputs from the same forward passes):
    logit(original) - logit(window set to `baseline`), averaged over the windows covering each voxel,
    [1, n_outputs, D, H, W]. window/stride are (z, y, x) voxels. Windows whose voxels all equal the baseline
    change nothing (air padding, 0 in the percentile-voi channel) and are skipped: their attribution is exactly 0."""
    if image.shape[0] != 1:
        raise ValueError(f"occlusion_maps takes one patch, got a batch of {image.shape[0]}")
    size = image.shape[2:]
    starts = [range(0, size[a] - window[a] + 1, stride[a]) for a in range(3)]
    boxes = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]
             if bool((image[0, :, z:z + window[0], y:y + window[1], x:x + window[2]] != baseline).any())]
    base = net(image, prior, descriptors)[0]
    total = torch.zeros((base.shape[0], *size))
    count = torch.zeros(tuple(size))
    for lo in range(0, len(boxes), batch):
        chunk = boxes[lo:lo + batch]
        x = image.repeat(len(chunk), 1, 1, 1, 1)
        for i, (z, y, xx) in enumerate(chunk):
            x[i, :, z:z + window[0], y:y + window[1], xx:xx + window[2]] = baseline
        n = len(chunk)
        drop = base[None] - net(x, prior.expand(n, -1, -1, -1, -1),
                                None if descriptors is None else descriptors.expand(n, -1))
        for i, (z, y, xx) in enumerate(chunk):
            total[:, z:z + window[0], y:y + window[1], xx:xx + window[2]] += drop[i][:, None, None, None]
    for z in starts[0]:
        for y in starts[1]:
            for xx in starts[2]:
                count[z:z + window[0], y:y + window[1], xx:xx + window[2]] += 1
    return (total / count.clamp_min(1))[None]


def mask_maps(maps: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Maps [n, D, H, W] set to 0 where `keep` [D, H, W] is False (e.g. outside what the network saw)."""
    if keep.shape != maps.shape[1:]:
        raise ValueError(f"mask shape {keep.shape} does not match the maps' grid {maps.shape[1:]}")
    return np.where(keep[None], maps, 0.0).astype(maps.dtype)


def max_normalised(maps: np.ndarray) -> np.ndarray:
    """Each map [n, ...] divided by its own maximum after ReLU (values in [0, 1]; an all-zero map stays 0)."""
    m = np.maximum(maps, 0.0)
    peak = m.reshape(m.shape[0], -1).max(axis=1)
    return (m / np.where(peak > 0, peak, 1.0).reshape(-1, *([1] * (m.ndim - 1)))).astype(np.float32)


def within_mm(mask: np.ndarray, distance_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Voxels within `distance_mm` of `mask` (the mask dilated by that distance, Euclidean in mm)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx) <= distance_mm


def edge_zone(visible: np.ndarray, width_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Air padding plus the outer `width_mm` of the visible box: voxels not visible, or visible and within
    `width_mm` of a non-visible voxel or of the patch border (the patch is padded with non-visible voxels)."""
    padded = np.pad(visible, 1, constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    # depth of a visible voxel is its distance to the nearest non-visible voxel centre, one voxel outside it
    return ~visible | (depth <= width_mm + min(spacing_zyx) * 1e-6)


def randomised_copy(net: HESAM, stage: int, seed: int = 0) -> HESAM:
    """A copy of `net` with the modules of CASCADE[0..stage] re-initialised (cascading from the logits down)."""
    torch.manual_seed(seed)
    out = copy.deepcopy(net)
    names = [n for _, group in CASCADE[:stage + 1] for n in group]
    modules = dict(out.named_modules())
    for name in names:
        if name not in modules:
            continue
        for sub in modules[name].modules():
            if hasattr(sub, "reset_parameters") and sub is not modules.get("", None):
                sub.reset_parameters()
            if sub.__class__.__name__ == "SoftActivationMapping":
                grid3 = sub.weight.shape[1]
                nn.init.normal_(sub.weight, mean=1.0 / grid3, std=0.01)
                nn.init.zeros_(sub.bias)
    return out.eval()


# --- What the product shows --------------------------------------------------------------------------------------
MAP_SCALE_NAME = "map_scale.json"
MAP_SCALE_FORMAT = 1


def member_maps(net: HESAM, image: Tensor, prior: Tensor, descriptors: Tensor | None, method: str) -> np.ndarray:
    """One network's unnormalised maps [n_outputs, D, H, W] of `method` (positive evidence only; one patch)."""
    if method == "contribution":
        with torch.no_grad():
            out = contribution_maps(net, image, prior, descriptors)
    elif method == "sam":
        with torch.no_grad():
            out = sam_raw_maps(net, image, prior, descriptors)
    elif method == "occlusion":
        out = occlusion_maps(net, image, prior, descriptors)
    else:
        raise ValueError(f"map method must be one of {MAP_METHODS}, got {method!r}")
    return np.maximum(out[0].float().cpu().numpy(), 0.0)


def displayed_maps(model: nn.Module, image: Tensor, prior: Tensor, descriptors: Tensor | None, visible: np.ndarray,
                   method: str = DEFAULT_MAP_METHOD, scales: np.ndarray | None = None) -> np.ndarray:
    """The maps the product shows, [n_outputs, D, H, W] in [0, 1]: each member's map of `method`, set to 0 outside
    `visible` (the CT the network saw; air padding carries no image), divided by that member's reference scale
    per output (`scales` [n_members, n_outputs], map_scale.json) and clipped to 1, or, without scales, by its own
    maximum (min-max per patch); then the mean over members."""
    members = list(getattr(model, "members", [model]))
    if scales is not None and scales.shape[0] != len(members):
        raise ValueError(f"map scales are given for {scales.shape[0]} members; the model has {len(members)}")
    maps = []
    for k, net in enumerate(members):
        m = mask_maps(member_maps(net, image, prior, descriptors, method), visible)
        if scales is None:
            maps.append(max_normalised(m))
        else:
            maps.append(np.clip(m / scales[k].reshape(-1, 1, 1, 1), 0.0, 1.0).astype(np.float32))
    return np.mean(maps, axis=0).astype(np.float32)


def read_map_scale(document: dict, output_names: Sequence[str], members: int, where: str) -> dict[str, np.ndarray]:
    """{method: scales [members, n_outputs]} from a map_scale.json document; BundleError naming `where` and the
    field when it does not fit the bundle."""
    from .errors import BundleError

    if document.get("format_version") != MAP_SCALE_FORMAT:
        raise BundleError(f"{where}: 'format_version' must be {MAP_SCALE_FORMAT}, "
                          f"got {document.get('format_version')!r}")
    methods = document.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise BundleError(f"{where}: 'methods' must map a map method to per-output scales")
    out = {}
    for method, per_output in methods.items():
        if method not in MAP_METHODS:
            raise BundleError(f"{where}: unknown map method {method!r}; expected one of {MAP_METHODS}")
        if not isinstance(per_output, dict) or set(per_output) != set(output_names):
            got = sorted(per_output) if isinstance(per_output, dict) else per_output
            raise BundleError(f"{where}: methods.{method} must give a scale for exactly the outputs "
                              f"{list(output_names)}, got {got}")
        table = np.array([per_output[n] for n in output_names], dtype=float).T  # [members, n_outputs]
        if table.shape != (members, len(output_names)) or not np.all(np.isfinite(table)) or np.any(table <= 0):
            raise BundleError(f"{where}: methods.{method} needs {members} positive scales per output (one per "
                              f"ensemble member), got shape {table.shape}")
        out[method] = table
    return out


_METHOD_WORDS = {"contribution": "the SAM head's evidence for the output, with the SAM layer's spatial weights",
                 "sam": "the paper's soft activation map (ReLU of the head's class-weighted features)",
                 "occlusion": "how much the output's logit falls when a 5.6 x 5.6 x 5 mm block is hidden"}


def map_display(method: str, scaled: bool) -> dict:
    """What a map colour means, for finding.json, the report and Slicer: {method, scale, legend}."""
    scale = ("1 = as strong as the strongest 5% of held-out LIDC nodules for this output (bundle map_scale.json), "
             "clipped at 1" if scaled else
             "1 = the strongest place in this patch, whatever the output's probability (min-max per patch)")
    legend = (f"Map: {_METHOD_WORDS[method]}; {scale}. Values below 0.25 are not coloured; the map is 0 outside "
              "the CT box the network saw. Nodule descriptors (size, shape, density) also enter each output and "
              "no map shows them.")
    return {"method": method, "scale": "reference" if scaled else "per-patch", "legend": legend}
