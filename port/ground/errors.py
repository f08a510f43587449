"""Errors a user can act on.

Every ``PorterError`` is a user mistake or an environment limit, never a bug: the CLI prints its
message as one line on stderr and exits with code 2. The message must say what is wrong *and*
what to do about it ("... not found: pass --data DIR pointing at an ImageFolder tree").
Bugs stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations

import re


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


# -- OS errors at the CLI boundary -------------------------------------------------------------
# errno name -> (what happened, what to do). Every write porter records goes through
# port.ground.atomic (temp file, fsync, rename), so whatever the OS refused, what was recorded
# before is intact: the messages say so where a user would worry (a full disk).
_OS_ERRORS: dict[str, tuple[str, str]] = {
    "ENOSPC": ("no space left on the device", "free some space and run the command again; the "
               "manifest and every recorded file are unchanged (writes are atomic)"),
    "EDQUOT": ("disk quota exceeded", "free some space and run the command again; the manifest "
               "and every recorded file are unchanged (writes are atomic)"),
    "EFBIG": ("file too large for this filesystem or the process's file size limit",
              "raise the limit (ulimit -f) or use another disk; nothing recorded was changed"),
    "EACCES": ("permission denied", "check the owner and permissions, or use another --run"),
    "EPERM": ("operation not permitted", "check the owner and permissions, or use another --run"),
    "EROFS": ("read-only filesystem", "use a --run directory on a writable disk"),
    "EEXIST": ("already exists", "move it away or choose another path"),
    "ENOTDIR": ("a part of the path is a file, not a directory", "check --run and the paths you "
                "passed"),
    "EISDIR": ("is a directory, not a file", "pass a file"),
    "ENOENT": ("no such file or directory", "check the path"),
    "ENAMETOOLONG": ("file name too long", "use a shorter path"),
    "EMFILE": ("too many open files", "raise the limit (ulimit -n) and run the command again"),
    "ENFILE": ("too many open files on the system", "close other programs and retry"),
    "ELOOP": ("too many symbolic links", "check the path for a symlink loop"),
    "ENOMEM": ("out of memory", "use smaller batch sizes or --limit, or close other programs"),
    "EIO": ("input/output error", "check the disk (dmesg) and run the command again"),
}


def os_error_line(exc: OSError) -> str:
    """One line for an OS error reaching the CLI: what, where, what to do (errno-keyed)."""
    import errno as errno_names

    name = errno_names.errorcode.get(exc.errno or -1, "")
    if not name and re.search(r"\d+ requested and \d+ written", str(exc)):
        # numpy's tofile (ONNX external data, onnx_ir) reports a short write without errno:
        # the device ran out of space mid-write.
        name = "ENOSPC"
    where = " -> ".join(_short(str(p)) for p in (exc.filename, exc.filename2) if p is not None)
    what, fix = _OS_ERRORS.get(name, (exc.strerror or type(exc).__name__,
                                      "check the path and run the command again"))
    return f"{where + ': ' if where else ''}{what}{f' ({name})' if name else ''}: {fix}"


def _short(text: str, limit: int = 160) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (a path in a one-line error)."""
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"
