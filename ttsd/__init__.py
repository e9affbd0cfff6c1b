"""ttsd: a local text-to-speech daemon."""

__version__ = "0.1.0"
