"""User-facing errors: each maps to one clear line on stderr and a distinct exit code."""

from __future__ import annotations


class LlmpruneError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback."""

    exit_code: int = 1


class UsageError(LlmpruneError):
    """An option value is out of range or inconsistent."""

    exit_code = 2


class ModelLoadError(LlmpruneError):
    """The model path or id cannot be found or read."""

    exit_code = 3


class UnsupportedArchitectureError(LlmpruneError):
    """The model family has no architecture adapter."""

    exit_code = 4


class DataError(LlmpruneError):
    """Calibration or evaluation text is missing, unreadable or too short."""

    exit_code = 5


class OutputExistsError(LlmpruneError):
    """The output folder exists and --overwrite was not given, or would clobber the input."""

    exit_code = 6


class UnknownMethodError(LlmpruneError):
    """The --method name is not registered for this strategy."""

    exit_code = 7


class NumericalError(LlmpruneError):
    """NaN/Inf appeared in activations, statistics or losses."""

    exit_code = 8


class ResumeError(LlmpruneError):
    """--resume was given but there is nothing consistent to resume from."""

    exit_code = 9


class MissingDependencyError(LlmpruneError):
    """An option needs an optional extra that is not installed (e.g. --tasks needs lm-eval)."""

    exit_code = 10


class WontFitError(LlmpruneError):
    """The pre-flight estimate says the run will not fit the device or the disk (``--force`` overrides)."""

    exit_code = 12
