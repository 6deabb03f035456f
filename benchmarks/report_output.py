"""The tail every comparison benchmark shares: the markdown with the command that made it, printed, and written with
its numbers as JSON beside it when --out is given."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_report(text: str, results: dict, out: Path | None) -> None:
    text = text + f"\n\nCommand: `python {' '.join(sys.argv)}`\n"
    print(text)
    if out is not None:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float))
