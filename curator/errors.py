"""Typed errors. Each message says what was wrong, where, and how to fix it.

The CLI turns a ``CuratorError`` into one line on stderr and its ``exit_code``:
2 for bad input or a refused mismatch, 1 for a runtime failure.
"""

from __future__ import annotations


class CuratorError(Exception):
    """Base class of every error curator raises on purpose."""

    exit_code: int = 2


class InputError(CuratorError):
    """A data file, row or option is invalid."""


class MismatchError(CuratorError):
    """Two artefacts (stores, configs) were made under different settings and cannot be mixed."""


class StoreError(CuratorError):
    """A store on disk is missing, corrupt, or of an unsupported format."""


class ModelError(CuratorError):
    """A model spec cannot be resolved or loaded."""


class CuratorRuntimeError(CuratorError):
    """Something failed while running, not because of the user's input."""

    exit_code = 1
