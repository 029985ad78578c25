"""Errors vqtok raises on bad input from a user or from disk.

The command line prints only the message (no traceback), so every message names
the offending key, value or path.
"""

from __future__ import annotations


class TokenizerError(Exception):
    """Base of every error vqtok raises on bad input; the command line catches it."""


class ConfigError(TokenizerError, ValueError):
    """A VQConfig value or key is invalid; the message names the field and the value."""


class CheckpointError(TokenizerError, RuntimeError):
    """A tokenizer directory or weights file cannot be loaded; the message names the path."""


__all__ = ["CheckpointError", "ConfigError", "TokenizerError"]
