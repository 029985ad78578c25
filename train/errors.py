"""Errors of the training layer; the command line prints their message alone (exit status 2)."""

from __future__ import annotations


class TrainError(Exception):
    """Base of every error `train` raises on bad input: settings, data, checkpoints."""


class TrainConfigError(TrainError, ValueError):
    """A training option that does not exist or has a bad value; the message names it."""


class ResumeError(TrainError, RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the path."""


class ImageError(TrainError, ValueError):
    """An image file that cannot be read or decoded; the message names it."""


__all__ = ["ImageError", "ResumeError", "TrainConfigError", "TrainError"]
