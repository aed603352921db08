"""Errors raised by the flows layer.

::

    FlowError
    ├── ReceiptError        (ValueError)       a receipt that is malformed, forged or tampered
    └── UncacheableInputError (TypeError)      a task input that cannot be part of a cache key
"""

from __future__ import annotations


class FlowError(Exception):
    """Root of every error raised by :mod:`flows`."""


class ReceiptError(FlowError, ValueError):
    """A receipt that does not parse, or whose signature does not verify."""


class UncacheableInputError(FlowError, TypeError):
    """A task input cidflow will not hash: pass artifacts by CID, not as in-memory objects."""
