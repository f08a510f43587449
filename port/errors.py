"""Errors a user can act on.

Every ``PorterError`` is a user mistake or an environment limit, never a bug: the CLI prints its
message as one line on stderr and exits with code 2. The message must say what is wrong *and*
what to do about it ("... not found: pass --data DIR pointing at an ImageFolder tree").
Bugs stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations


class PorterError(Exception):
    """Base class: a problem the user can fix. The CLI maps it to exit code 2."""


class UsageError(PorterError):
    """Flags that conflict, are out of range, or name something unknown."""


class DataError(PorterError):
    """A data set that is missing, corrupt, empty, or does not match the model."""


class ModelError(PorterError):
    """A checkpoint or ONNX file that is missing, truncated, unsafe or mismatched."""


class ManifestError(PorterError):
    """A run directory whose manifest or artifacts do not allow the requested stage."""


class BackendUnavailable(PorterError):
    """A target that needs hardware or a package this machine does not have (GPU, TensorRT)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (or its type name), at most ``limit`` chars.

    Library errors (ONNX checker, ORT, TensorRT) span many lines; a porter message quotes only
    this much so the user still gets one line on stderr.
    """
    for line in str(exc).strip().splitlines():
        line = " ".join(line.split()).replace("[ONNXRuntimeError] : ", "")
        if line:
            return line[:limit]
    return type(exc).__name__
