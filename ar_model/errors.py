"""Errors ar_model raises on bad input from a user or from disk.

The command line prints only the message (no traceback), so every message names
the offending key, value or path.
"""

from __future__ import annotations


class GeneratorError(Exception):
    """Base of every error ar_model raises on bad input; the command line catches it."""


class ConfigError(GeneratorError, ValueError):
    """A SequenceLayout / GeneratorConfig / SampleConfig value or key is invalid; the message names it."""


class CheckpointError(GeneratorError, RuntimeError):
    """A generator or tokenizer directory cannot be loaded; the message names the path."""


__all__ = ["CheckpointError", "ConfigError", "GeneratorError"]
