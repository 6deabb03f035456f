"""The one progress protocol: `progress(fraction, message)`, with `fraction` the share of the whole job done, in
[0, 1], and `message` what is being done now. Every engine function that reports progress takes one, and every face
listens the same way: the Slicer module's progress bar, the worker's JSON lines, the command line's tqdm bars and
the training CLI module's log records.

A job made of units reports "unit i of n" with `report_count`: the fraction is a `Count`, a float that also keeps
i and n, so a bar can show "3/10 series" where it is read; everywhere else it is just the fraction. `part` hands a
step of a job a Progress of its own, mapped onto its share of the whole.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]


class Count(float):
    """`done / total` (1.0 when `total` is 0) that remembers `done` and `total`; arithmetic on it gives a plain float,
    so a fraction rescaled by `part` no longer claims to be a count."""

    __slots__ = ("done", "total")

    def __new__(cls, done: int, total: int) -> Count:
        count = super().__new__(cls, done / total if total > 0 else 1.0)
        count.done, count.total = done, total
        return count


def report_count(progress: Progress | None, done: int, total: int, message: str) -> None:
    """Tell `progress` (when there is one) that `done` of `total` units are finished; `message`: the latest unit."""
    if progress is not None:
        progress(Count(done, total), message)


def part(progress: Progress | None, start: float, stop: float, prefix: str = "") -> Progress | None:
    """The Progress of a step that covers [start, stop] of the whole job: its fractions are mapped onto that range
    and its messages prefixed with `prefix`. None when `progress` is None."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (stop - start) * fraction, prefix + message)
