"""Errors modefuse raises on bad input: each names the problem and the fix."""
from __future__ import annotations


class ModefuseError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class DataNotFoundError(ModefuseError, FileNotFoundError):
    """A dataset's files were not found in any of the places searched."""


class CheckpointError(ModefuseError):
    """A checkpoint is missing, truncated, foreign, or holds non-finite weights."""


class ArchitectureMismatchError(ModefuseError):
    """Two models that must share an architecture do not."""


class SpecInferenceError(ModefuseError):
    """torch.fx could not place a node of the model in the permutation spec."""


class InvalidArgumentError(ModefuseError, ValueError):
    """An argument is out of its range (a non-positive learning rate, fewer than two points, ...)."""
