"""The package version (a leaf module: internal modules import it, never the package root)."""

__version__ = "0.1.0"
