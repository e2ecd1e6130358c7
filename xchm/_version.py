"""The xchm version (single source, read by pyproject and the model card)."""

__version__ = "0.1.0"
