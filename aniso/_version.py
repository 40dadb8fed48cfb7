"""Package version (also part of every run key: a code change is a new run)."""

__version__ = "0.1.0"
