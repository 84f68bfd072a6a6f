"""accel: a caching HTTP accelerator on Twisted."""

__version__ = "0.1.0"
