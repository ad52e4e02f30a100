"""nmtkit: neural machine translation, readable and complete."""

__version__ = "0.1.0"
