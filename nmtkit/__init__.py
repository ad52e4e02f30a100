"""nmtkit: neural machine translation, readable and complete."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nmtkit.translator import Translator


def __getattr__(name: str):
    # `from nmtkit import Translator` without importing torch for `nmtkit --help`
    if name == "Translator":
        from nmtkit.translator import Translator

        return Translator
    raise AttributeError(name)


__all__ = ["Translator", "__version__"]
