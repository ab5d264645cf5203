"""The package's version, in a module of its own: checkpoints and results record it, and nothing it
imports can lead back to the package root."""
__version__ = "0.1.0"
