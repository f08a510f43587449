"""porter: from PyTorch training to deployed inference engines, with proof."""

__version__ = "0.1.0"
