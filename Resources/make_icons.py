"""Draw the extension and module icon (128 x 128 PNG): a lung outline, a nodule and its heat map.

Run from the repository root: `python Resources/make_icons.py`; writes Resources/LungNoduleExplain.png and
LungNoduleExplain/Resources/Icons/LungNoduleExplain.png.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (ROOT / "Resources" / "LungNoduleExplain.png",
           ROOT / "LungNoduleExplain" / "Resources" / "Icons" / "LungNoduleExplain.png")


def draw(path: Path) -> None:
    figure = plt.figure(figsize=(1.28, 1.28), dpi=100)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.axis("off")
    for x in (0.3, 0.7):  # two lungs
        axes.add_patch(Ellipse((x, 0.5), 0.36, 0.78, facecolor="#2b3a55", edgecolor="#9fb4d9", linewidth=2))
    y, x = np.mgrid[0:1:128j, 0:1:128j]
    heat = np.exp(-((x - 0.7) ** 2 + (y - 0.42) ** 2) / 0.012)
    heat = np.ma.masked_less(heat, 0.25)  # like the module: values below 0.25 hidden
    axes.imshow(heat, extent=(0, 1, 0, 1), origin="lower", cmap="hot", alpha=0.85, vmin=0, vmax=1, zorder=2)
    axes.add_patch(Ellipse((0.7, 0.42), 0.1, 0.1, facecolor="none", edgecolor="#33e64d", linewidth=1.5, zorder=3))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, transparent=True)
    plt.close(figure)


if __name__ == "__main__":
    for target in TARGETS:
        draw(target)
        print(f"wrote {target}")
