"""The project's exceptions, one tree. Translated in exactly three places: the SCP handler
(DIMSE status, ``dicom_node.scp.handlers``), the workers' base task (retry / reject / fail,
``workers.tasks``) and the CLI (exit code + one line, ``dicom_node.cli``).

    GazexError
    ├── ConfigError (ValueError)      invalid settings; names the key
    ├── PeerError (ValueError)        unknown peer, duplicate name, bad role
    ├── AccountError (ValueError)     a review account that cannot be added or changed
    ├── StoreRejected (ValueError)    a data set we refuse; carries the DIMSE status
    │   ├── DataSetMismatch           0xA900: does not match the SOP class / request
    │   └── CannotUnderstand          0xC000: cannot be parsed
    ├── AnalysisRefused (ValueError)  poison input: the worker records it, never retries
    ├── ModelUnavailable (RuntimeError)  the model stack is not installed, or the checkpoint
    │                                    cannot be loaded: the worker is not ready
    ├── OutOfResources (OSError)      0xA700: disk full or database unavailable
    ├── StartError (OSError)          the node cannot start: port in use, another node on
    │                                 this home or database, database unreachable
    ├── DeliveryError (OSError)       a destination refused or could not be reached
    ├── HL7BuildError (ValueError)    an ORU^R01 could not be built or failed validation
    └── MLLPError                     an HL7 message was not accepted by the receiver
        ├── MLLPTransportError (OSError)  no connection, timeout, reset, or closed before an
        │                                 ACK: retried (with backoff)
        └── AckError (ValueError)         the receiver answered, but not with an accept
            ├── AckRejected               AR / CR: refused; resending it will not help
            ├── AckApplicationError       AE / CE: the receiver failed to process it
            └── AckMismatch               not an ACK, or MSA-2 is not our MSH-10
"""

from __future__ import annotations

import errno


class GazexError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(GazexError, ValueError):
    pass


class PeerError(GazexError, ValueError):
    pass


class AccountError(GazexError, ValueError):
    """A review account that cannot be added or changed: bad name, role or password,
    unknown or duplicate name."""


class StoreRejected(GazexError, ValueError):
    status: int = 0xC000


class DataSetMismatch(StoreRejected):
    status = 0xA900


class CannotUnderstand(StoreRejected):
    status = 0xC000


class AnalysisRefused(GazexError, ValueError):
    """A study the model cannot analyse (no frontal radiograph, unreadable pixels)."""


#: Top-level modules of the ``[model]`` extra (pyproject.toml).
MODEL_EXTRA_MODULES = frozenset(
    {"torch", "transformers", "tokenizers", "safetensors", "multimatch_gaze"}
)


class ModelUnavailable(GazexError, RuntimeError):
    """The model cannot be loaded in this process; the message says what to do."""

    @classmethod
    def missing_extra(cls, exc: ModuleNotFoundError) -> ModelUnavailable | None:
        """The error for an import that failed because the ``[model]`` extra is not
        installed, or None when the missing module is something else."""
        root = (exc.name or "").partition(".")[0]
        if root not in MODEL_EXTRA_MODULES:
            return None
        return cls(
            f"the model stack is not installed (no module named {root!r}); install it with "
            "`pip install 'gazex-node[model]'` (scripts/setup does)"
        )


class OutOfResources(GazexError, OSError):
    status = 0xA700


class StartError(GazexError, OSError):
    """The node cannot start; the message names the setting or resource at fault."""


def port_error(key: str, bind: str, port: int, exc: OSError) -> StartError:
    """The one-line error for a port that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        why = "is in use (another node, or another program?)"
    elif exc.errno == errno.EACCES:
        why = "is not allowed (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    else:
        why = f"cannot be opened ({exc.strerror or exc})"
    return StartError(f"{key}: port {port} on {bind} {why}")


class DeliveryError(GazexError, OSError):
    """A C-STORE to a destination failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class HL7BuildError(GazexError, ValueError):
    """The message could not be built or did not pass hl7apy's strict validation."""


class MLLPError(GazexError):
    """An HL7 message was not accepted by the receiver."""


class MLLPTransportError(MLLPError, OSError):
    """No usable connection, or no complete ACK in time."""


class AckError(MLLPError, ValueError):
    """The receiver answered with something other than an accept; ``ack`` is what it said
    (a ``workers.hl7.mllp.Ack``) when it could be read."""

    def __init__(self, message: str, ack: object | None = None) -> None:
        super().__init__(message)
        self.ack = ack


class AckRejected(AckError):
    """MSA-1 AR/CR: the receiver rejects the message; resending it unchanged will not help."""


class AckApplicationError(AckError):
    """MSA-1 AE/CE: the receiver failed to process the message."""


class AckMismatch(AckError):
    """Not an ACK, or one that does not acknowledge the message sent."""
