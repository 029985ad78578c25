"""Errors of the evaluation layer; the command line prints their message alone (exit status 2)."""

from __future__ import annotations


class EvalError(Exception):
    """Base of every error `eval` raises on bad input: options, feature weights, runs it cannot measure."""


class EvalConfigError(EvalError, ValueError):
    """An evaluation or benchmark option with a bad value; the message names it."""


class BenchError(EvalError, ValueError):
    """A bad bench option or a run the bench cannot use; the message says which."""


class FeaturesError(EvalError, ValueError):
    """FID features that cannot be used as given (unknown name, unreadable weights)."""


class FeaturesUnavailableError(EvalError, ImportError):
    """FID features that need a package that is not installed."""


__all__ = ["BenchError", "EvalConfigError", "EvalError", "FeaturesError", "FeaturesUnavailableError"]
