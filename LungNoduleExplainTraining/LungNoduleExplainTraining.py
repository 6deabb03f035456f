#!/usr/bin/env python-real
"""Slicer CLI module over the engine's training: `lungnodule-explain train ...`.

Slicer runs this with its own Python, passing the flags declared in LungNoduleExplainTraining.xml; it calls the
engine through its command line (`LungNoduleExplainLib.cli.main(["train", ...])`), so the engine's training API
can change without touching this file. Progress reaches Slicer as <filter-progress> lines, read from the
engine's INFO log records: a record's `progress` attribute (logger.info(message, extra={"progress": f})) when it
has one, else an "epoch N/M" in its message; every log message is also shown as a <filter-comment>.

Cancel, as Slicer does it: vtkSlicerCLIModuleLogic sees the Abort flag and calls itksysProcess_Kill, which sends
SIGSTOP to this process, SIGKILL to each of its children (found through /proc) and then SIGKILL to it
(kwsys ProcessUNIX.c, kwsysProcessKill). No Python code runs after that: no handler, no `finally`, no clean-up.
What makes that safe is the engine: every checkpoint, history.csv and the bundle are written to a temporary file
and renamed into place, so a kill at any moment leaves the last completed epoch's checkpoint whole, and
"Resume" (`--resume`) continues from it. The write that was killed can leave its hidden temporary beside the file
(`.checkpoint.pt.<random>.tmp.pt`, atomic.atomic_path); nothing reads it, and Resume deletes it.
Testing/test_extension_files.py kills a real CPU training run this way and resumes it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence, TextIO

XML_PATH = Path(__file__).with_suffix(".xml")
EPOCH_PATTERN = re.compile(r"\bepoch\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)
VALUE_FLAGS = ("data", "tasks", "variant", "epochs", "members", "device", "out")  # in the order they are passed on
SWITCHES = ("resume", "overwrite")


def build_parser() -> argparse.ArgumentParser:
    """Exactly the flags of LungNoduleExplainTraining.xml (a test checks they agree), without choices or defaults:
    those are the engine's (`lungnodule-explain train` checks the values; a flag not given keeps its default there),
    and Testing/test_vocabulary.py checks the XML's against them."""
    parser = argparse.ArgumentParser(description="Slicer CLI entry of `lungnodule-explain train`.")
    parser.add_argument("--data", required=True, help="folder in the lidc-voi format")
    parser.add_argument("--tasks", help="built-in task set or task JSON file")
    parser.add_argument("--variant", help="network variant")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--members", type=int)
    parser.add_argument("--device")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--out", required=True, help="output bundle folder")
    return parser


def train_argv(args: argparse.Namespace) -> list[str]:
    """The `lungnodule-explain` arguments for these CLI parameters (those given)."""
    argv = ["train"]
    for name in VALUE_FLAGS:
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return argv + [f"--{name}" for name in SWITCHES if getattr(args, name)]


class FilterProgressHandler(logging.Handler):
    """Log records -> Slicer's CLI progress protocol on stdout."""

    def __init__(self, stream: TextIO):
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        fraction = getattr(record, "progress", None)
        match = EPOCH_PATTERN.search(message)
        if fraction is None and match and int(match.group(2)) > 0:
            fraction = int(match.group(1)) / int(match.group(2))
        if fraction is not None:
            write_progress(self.stream, min(max(float(fraction), 0.0), 1.0))
        comment = message.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
        self.stream.write(f"<filter-comment>{comment}</filter-comment>\n")
        self.stream.flush()


def write_progress(stream: TextIO, fraction: float) -> None:
    stream.write(f"<filter-progress>{fraction:.4f}</filter-progress>\n")
    stream.flush()


def _import_engine_cli():
    """The engine lives in the scripted module's folder (qt-scripted-modules) beside this one (cli-modules)."""
    try:
        from LungNoduleExplainLib import cli
    except ImportError:
        here = Path(__file__).resolve().parent
        for candidate in (here.parent / "qt-scripted-modules", here.parent / "LungNoduleExplain"):
            if (candidate / "LungNoduleExplainLib").is_dir():
                sys.path.insert(0, str(candidate))
                break
        from LungNoduleExplainLib import cli
    return cli


def main(argv: Sequence[str] | None = None, stream: TextIO | None = None, engine_main=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stream = stream or sys.stdout
    if argv == ["--xml"]:
        stream.write(XML_PATH.read_text(encoding="utf-8"))
        return 0
    args = build_parser().parse_args(argv)
    if engine_main is None:
        engine_main = _import_engine_cli().main
    handler = FilterProgressHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)  # with a handler in place, the engine's basicConfig adds none of its own
    root.setLevel(logging.INFO)
    stream.write("<filter-start><filter-name>LungNoduleExplainTraining</filter-name>"
                 "<filter-comment>training started</filter-comment></filter-start>\n")
    write_progress(stream, 0.0)
    try:
        code = engine_main(train_argv(args))
    finally:
        root.removeHandler(handler)
    if code == 0:
        write_progress(stream, 1.0)
    stream.write("<filter-end><filter-name>LungNoduleExplainTraining</filter-name>"
                 "<filter-time>0</filter-time></filter-end>\n")
    stream.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
