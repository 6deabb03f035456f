"""Rerun `evaluate` of the shipped bundle on lidc-voi and compare every figure with the recorded metrics_after.json.

    nnUNet_compile=False python benchmarks/refactor_equivalence/check.py --prior oof/nnunet

Criterion (README.md): after a refactor the shipped bundle behaves the same: every output's AUC, its bootstrap
interval, threshold, counts, ECE and Brier score equal the recorded ones exactly (the bootstrap is seeded, so equal
predictions give equal intervals). Needs the out-of-fold nnU-Net maps ($LUNGNODULE_RUNS/oof/nnunet, from
benchmarks/out_of_fold/make_oof.py). Writes rerun.json and its stamp beside this file.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, sha256, write_stamp  # noqa: E402

HERE = Path(__file__).resolve().parent


def differences(recorded: object, measured: object, where: str = "") -> list[str]:
    """Every leaf where the two JSON values differ (numbers compared exactly; NaN equals NaN)."""
    if isinstance(recorded, dict) and isinstance(measured, dict):
        out = [f"{where}/{k}: missing in the rerun" for k in recorded if k not in measured]
        return out + [d for k in recorded if k in measured for d in differences(recorded[k], measured[k],
                                                                                 f"{where}/{k}")]
    if isinstance(recorded, float) and isinstance(measured, float) and math.isnan(recorded) and math.isnan(measured):
        return []
    return [] if recorded == measured else [f"{where}: recorded {recorded!r}, now {measured!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="lidc-voi", help="under LUNGNODULE_DATA (default %(default)s)")
    parser.add_argument("--prior", default="oof/nnunet", help="under LUNGNODULE_RUNS (default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=200, help="as recorded (default %(default)s)")
    parser.add_argument("--against", type=Path, default=HERE / "metrics_after.json")
    parser.add_argument("--out", type=Path, default=HERE / "rerun.json")
    args = parser.parse_args(argv)
    data, prior = data_path(args.data), runs_path(args.prior)
    recorded = json.loads(args.against.read_text())
    with tempfile.TemporaryDirectory(prefix="evaluate-") as folder:
        out = Path(folder) / "eval"
        subprocess.run([sys.executable, "-m", "LungNoduleExplainLib.cli", "--quiet", "evaluate", "--data", str(data),
                        "--prior", str(prior), "--out", str(out), "--device", "cpu", "--bootstrap",
                        str(args.bootstrap)], check=True)
        measured = json.loads((out / "metrics.json").read_text())
        predictions = sha256(out / "predictions.csv")
    found = differences(recorded["outputs"], measured["outputs"], "outputs")
    result = {"identical": not found, "differences": found, "predictions_csv_sha256": predictions,
              "auc": {name: o["auc"] for name, o in measured["outputs"].items()},
              "against": args.against.name}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    write_stamp(args.out, [data, prior, args.against])
    print(json.dumps(result, indent=1))
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
