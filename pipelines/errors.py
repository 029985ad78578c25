"""Errors of the run layer; the command line prints their message alone."""

from __future__ import annotations


class RunError(Exception):
    """A run directory that cannot be used as asked; the message names the path and what to do."""


class MissingPartError(RunError, FileNotFoundError):
    """A run lacks a trained part (tokenizer/, generator/, baseline/ ...)."""


class EditError(RunError, ValueError):
    """An edit that cannot be made as asked: a run trained without editing, an empty instruction."""


__all__ = ["EditError", "MissingPartError", "RunError"]
