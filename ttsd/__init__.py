"""ttsd: a local text-to-speech daemon."""

__version__ = "0.2.0"
