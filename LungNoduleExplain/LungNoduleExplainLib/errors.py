"""Exceptions the engine raises on bad input; each message names the file/field and what was expected."""


class LungNoduleExplainError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputImageError(LungNoduleExplainError, ValueError):
    """A CT image is missing, unreadable, or not a usable chest CT."""


class PointError(LungNoduleExplainError, ValueError):
    """A clicked point is outside the image or otherwise unusable."""


class DatasetError(LungNoduleExplainError, ValueError):
    """A dataset folder or table does not follow the expected format."""


class BundleError(LungNoduleExplainError, ValueError):
    """A model bundle is missing, incomplete, or fails its checksum."""


class ConfigError(LungNoduleExplainError, ValueError):
    """A configuration (tasks, training, network) is invalid."""


class NoNoduleError(PointError):
    """No nodule at a clicked point (nodule_check): the message says what was found instead; `check` holds the
    measured facts (a NoduleCheck) and `point_lps` the point (LPS mm)."""

    def __init__(self, message: str, check=None, point_lps=None) -> None:  # noqa: ANN001 - NoduleCheck, tuple
        super().__init__(message)
        self.check = check
        self.point_lps = point_lps


class OutputExistsError(LungNoduleExplainError, FileExistsError):
    """The output folder already holds files and replacing it was not asked for, or it is not ours to replace."""
