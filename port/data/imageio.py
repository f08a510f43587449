"""Reading one image file, with an error a user can act on when the file is broken."""

from __future__ import annotations

import struct
from pathlib import Path

from PIL import Image, ImageOps

from port.data.pixels import to_rgb
from port.ground.errors import DataError

# What PIL raises on broken files: OSError (unidentified, truncated, missing), SyntaxError and
# ValueError (malformed headers/chunks), EOFError (short GIF/TIFF), struct.error (short headers),
# DecompressionBombError (absurd dimensions, an Exception subclass of its own).
PIL_READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded. Its message names the file and the fix.

    A DataLoader worker that hits one sends the formatted traceback to the main process, which
    re-raises ``UnreadableImageError("Caught ... Original Traceback ...\\n<module>.<class>: msg")``.
    The constructor recognises that text and keeps only the original one-line message (the full
    worker text stays in ``worker_traceback``), so the CLI still prints a single line.
    """

    def __init__(self, message: str) -> None:
        self.worker_traceback: str | None = None
        if "\nOriginal Traceback" in message:
            self.worker_traceback = message
            last = message.rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last[len(prefix) :] if last.startswith(prefix) else last
        super().__init__(message)


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image; ``UnreadableImageError`` if it is broken.

    Decoding happens here (``load()``), not lazily later, so a truncated file fails with its name
    instead of deep inside a transform.
    """
    try:
        # Open the file ourselves (as torchvision's pil_loader does) so it is closed right away
        # while the decoded pixels stay in memory.
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            # Cameras store portrait photos as landscape pixels plus an EXIF orientation tag;
            # every viewer (and torchvision users who call it) turns them upright.
            img = ImageOps.exif_transpose(img)
    except PIL_READ_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # keep the message one line
        raise UnreadableImageError(
            f"cannot read image {path} ({reason}): remove or replace the file"
        ) from exc
    return to_rgb(img)
