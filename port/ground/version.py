"""porter's own version, on the ground floor so every module can name it without importing up.

``port.__version__`` re-exports it; keep it equal to ``version`` in ``pyproject.toml``.
"""

from __future__ import annotations

VERSION = "0.1.0"
