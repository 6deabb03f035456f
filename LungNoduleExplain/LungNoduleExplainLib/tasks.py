"""Which outputs a model has: one diagnosis plus K manifestations, each with its label rule.

A rule maps a table cell (a rating or a category) to 1 (the finding is present), 0 (absent) or None (left out
of that output's loss and metrics). LIDC's set and a hospital's own set are just two JSON configurations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .atomic import write_json_atomic
from .errors import ConfigError

BUILTIN_TASK_SETS = ("lidc", "inhouse-example")
TASK_FIELDS = ("name", "column", "positive", "negative", "description", "readers_column")


def _canonical(value: Any) -> str | None:
    """Table cells and rule values compare as text; 4, 4.0 and "4" are the same; blanks are None."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if text == "" or text.lower() in {"nan", "na", "none"}:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


@dataclass(frozen=True)
class Task:
    """One binary output.

    name: the finding a radiologist reads, e.g. "spiculated". column: the table column holding the rating.
    positive / negative: the cell values meaning present / absent; any other value is left out.
    readers_column (optional): a column holding each reader's rating, ';'-separated (LIDC's
    `malignancy_reader_ratings`). Where a row has it, the training target is the share of readers whose rating is
    positive among those whose rating is positive or negative (see `target`); metrics stay on `column`'s label.
    """

    name: str
    column: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    description: str = ""
    readers_column: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"task name {self.name!r} must be non-empty letters, digits and '_'")
        if not self.column:
            raise ConfigError(f"task {self.name!r}: 'column' is empty")
        blank = [v for v in (*self.positive, *self.negative) if _canonical(v) is None]
        if blank:  # such cells read as unknown, so the value would silently never match
            raise ConfigError(f"task {self.name!r}: values {blank} mean an unknown value in a table cell "
                              "(empty, 'NA', 'NaN', 'None'); recode that category, e.g. 'absent'")
        pos = {_canonical(v) for v in self.positive}
        neg = {_canonical(v) for v in self.negative}
        if not pos or not neg:
            raise ConfigError(f"task {self.name!r}: 'positive' and 'negative' must each list at least one value")
        if pos & neg:
            raise ConfigError(f"task {self.name!r}: values {sorted(pos & neg)} are both positive and negative")
        object.__setattr__(self, "positive", tuple(sorted(pos)))
        object.__setattr__(self, "negative", tuple(sorted(neg)))

    def label(self, value: Any) -> int | None:
        """1, 0, or None (left out) for one table cell."""
        key = _canonical(value)
        if key in self.positive:
            return 1
        if key in self.negative:
            return 0
        return None

    def target(self, row: Mapping[str, Any]) -> float | None:
        """The training target of one row: the readers' share in [0, 1] where `readers_column` has ratings, else
        the label. Why: a per-nodule mode hides disagreement (ratings 4;5;3;2 have mode 2, "benign", under the
        ties-to-lower rule); the share keeps it, and a nodule whose mode is left out (3) still teaches through the
        readers who committed. A reader who chose a left-out value is left out, as the rule leaves out such a
        nodule. Raises ValueError naming the cell when a rating is not a number."""
        cell = str(row.get(self.readers_column) or "").strip() if self.readers_column else ""
        if not cell:
            y = self.label(row.get(self.column))
            return None if y is None else float(y)
        ratings = cell.split(";")
        try:
            [float(r) for r in ratings]
        except ValueError:
            raise ValueError(f"column {self.readers_column!r}: {cell!r} is not ';'-separated ratings") from None
        committed = [y for y in (self.label(r) for r in ratings) if y is not None]
        return sum(committed) / len(committed) if committed else None

    def allowed_values(self) -> set[str]:
        return set(self.positive) | set(self.negative)

    def to_dict(self) -> dict:
        data = {"name": self.name, "column": self.column, "positive": list(self.positive),
                "negative": list(self.negative), "description": self.description}
        if self.readers_column:
            data["readers_column"] = self.readers_column
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> "Task":
        missing = [k for k in ("name", "column", "positive", "negative") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {missing}; expected name, column, positive, negative")
        unknown = sorted(set(data) - set(TASK_FIELDS))
        if unknown:  # a misspelt optional field would be ignored without a word
            raise ConfigError(f"{where}: unknown field(s) {unknown}; expected {list(TASK_FIELDS)}")
        for key in ("positive", "negative"):
            if not isinstance(data[key], (list, tuple)):  # a bare string would become its letters
                raise ConfigError(f"{where}: {key!r} must be a list of cell values, e.g. [1] or [\"MPL\"], "
                                  f"got {data[key]!r}")
        return cls(name=str(data["name"]), column=str(data["column"]),
                   positive=tuple(data["positive"]), negative=tuple(data["negative"]),
                   description=str(data.get("description", "")),
                   readers_column=str(data.get("readers_column", "")))


@dataclass(frozen=True)
class TaskSet:
    """The diagnosis output and the K manifestation outputs of a model, in output order."""

    name: str
    diagnosis: Task
    manifestations: tuple[Task, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [t.name for t in self.all_tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task set {self.name!r}: output names must be unique, got {names}")

    @property
    def all_tasks(self) -> tuple[Task, ...]:
        return (self.diagnosis, *self.manifestations)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.all_tasks]

    @property
    def columns(self) -> list[str]:
        return sorted({t.column for t in self.all_tasks})

    def labels(self, row: Mapping[str, Any]) -> list[int | None]:
        """Labels of one table row for every output, diagnosis first."""
        return [t.label(row.get(t.column)) for t in self.all_tasks]

    def targets(self, row: Mapping[str, Any]) -> list[float | None]:
        """Training targets of one row for every output (Task.target), diagnosis first."""
        return [t.target(row) for t in self.all_tasks]

    def to_dict(self) -> dict:
        return {"name": self.name, "diagnosis": self.diagnosis.to_dict(),
                "manifestations": [t.to_dict() for t in self.manifestations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task set") -> "TaskSet":
        if not isinstance(data, Mapping) or "diagnosis" not in data:
            raise ConfigError(f"{where}: missing 'diagnosis'")
        unknown = sorted(set(data) - {"name", "diagnosis", "manifestations"})
        if unknown:  # e.g. "manifestation" would silently give a model without manifestations
            raise ConfigError(f"{where}: unknown field(s) {unknown}; expected name, diagnosis, manifestations")
        manifestations = data.get("manifestations", [])
        if not isinstance(manifestations, list):
            raise ConfigError(f"{where}: 'manifestations' must be a list")
        return cls(name=str(data.get("name", "custom")),
                   diagnosis=Task.from_dict(data["diagnosis"], f"{where}: diagnosis"),
                   manifestations=tuple(Task.from_dict(m, f"{where}: manifestations[{i}]")
                                        for i, m in enumerate(manifestations)))

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())


def load_task_set(name_or_path: str | Path) -> TaskSet:
    """A built-in task set by name ("lidc", "inhouse-example") or a JSON file."""
    if str(name_or_path) in BUILTIN_TASK_SETS:
        text = resources.files(__package__).joinpath("configs", f"tasks-{name_or_path}.json").read_text()
        return TaskSet.from_dict(json.loads(text), where=f"built-in task set {name_or_path}")
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"task set {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_TASK_SETS)}) "
                          "nor an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"task set file {path}: invalid JSON ({exc})") from exc
    return TaskSet.from_dict(data, where=str(path))


def lidc_task_set() -> TaskSet:
    return load_task_set("lidc")


def prevalence(task_set: TaskSet, rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """(positives, negatives) per output."""
    counts = {t.name: [0, 0] for t in task_set.all_tasks}
    for row in rows:
        for t, y in zip(task_set.all_tasks, task_set.labels(row)):
            if y is not None:
                counts[t.name][1 - y] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}
