"""Errors raised by the flows layer.

::

    FlowError
    ├── ReceiptError        (ValueError)       a receipt that is malformed, forged or tampered
    ├── UncacheableInputError (TypeError)      a task input that cannot be part of a cache key
    ├── DatasetError        (ValueError)       an unknown or unreadable dataset source
    ├── ModelSpecError      (ValueError)       an unknown model, or a user factory that fails
    │   ├── UntrustedCodeError                 model code the caller did not trust (nothing ran)
    │   └── CodeArtifactError                  a code artifact that is malformed or forged
    ├── ShapeMismatchError  (ValueError)       a model whose input does not fit the dataset
    ├── TrainingError       (RuntimeError)     training failed (NaN loss, say)
    ├── HubError            (ValueError)       a Hugging Face repo that cannot be found or read
    ├── AggregationError    (ValueError)       federated updates that cannot be aggregated
    ├── RunRequestError     (PermissionError)  a node refused to run: no valid signed request
    ├── PrivateDataError    (PermissionError)  a private dataset not held, or its policy says no
    └── SandboxError        (RuntimeError)     user code could not run sandboxed, or failed
        ├── SandboxUnavailableError            no working sandbox backend on this machine
        └── SandboxJobError                    killed at a limit, failed, or outputs refused
"""

from __future__ import annotations


class FlowError(Exception):
    """Root of every error raised by :mod:`flows`."""


class ReceiptError(FlowError, ValueError):
    """A receipt that does not parse, or whose signature does not verify."""


class UncacheableInputError(FlowError, TypeError):
    """A task input cidflow will not hash: pass artifacts by CID, not as in-memory objects."""


class DatasetError(FlowError, ValueError):
    """A dataset source that is unknown, missing or unreadable."""


class ModelSpecError(FlowError, ValueError):
    """An unknown model name, a bad ``module:factory``, or a factory that raised."""


class UntrustedCodeError(ModelSpecError):
    """Model code that the caller did not trust: a code artifact whose CID is not trusted, or a
    local ``module:factory`` named by data (an artifact's attributes) rather than by the caller.
    Raised before anything is imported; ``what`` is the CID or ``module:factory``."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class CodeArtifactError(ModelSpecError):
    """A CID named as code that is not a well-formed code artifact (not one at all, a file
    that is not Python, a path that escapes its folder, a symbolic link in a folder to add)."""


class ShapeMismatchError(FlowError, ValueError):
    """A model whose input shape does not fit the dataset (found before training starts)."""


class TrainingError(FlowError, RuntimeError):
    """Training failed, e.g. the loss became NaN; nothing is published."""


class HubError(FlowError, ValueError):
    """A Hugging Face source that is not a folder or repo id, not cached offline, or unreadable."""


class AggregationError(FlowError, ValueError):
    """Federated updates that cannot be aggregated: none at all, names or shapes that differ,
    non-finite values, no examples in total, or a robust rule given too few clients for the
    number of Byzantine clients it must tolerate. Strategies turn it into a failed
    :class:`~flows.federated.strategies.base.AggregateResult` rather than letting it escape.
    """


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line
    errors that wrap another library's exception."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class RunRequestError(FlowError, PermissionError):
    """A node refused to start a run: no signed run request, a signer not on the operator's
    allow-list, a request for other parameters, expired or already used (a replay)."""


class PrivateDataError(FlowError, PermissionError):
    """A private dataset that this node does not hold, or whose owner's policy forbids this
    use: both say the same, so the error tells nothing about what the node holds."""


class SandboxError(FlowError, RuntimeError):
    """User code could not be run in the sandbox, or its run failed or gave bad outputs."""


class SandboxUnavailableError(SandboxError):
    """No working sandbox backend (bwrap, unshare) on this machine: user code is refused."""


class SandboxJobError(SandboxError):
    """A sandboxed model job failed: non-zero exit, killed at a limit, or outputs refused.

    ``reason`` is one short line (``"timeout"``, ``"cpu limit"``, ``"worker: MemoryError..."``).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
