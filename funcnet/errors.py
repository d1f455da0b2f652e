"""funcnet's error types: every mistake a user can make raises one of these."""
from __future__ import annotations

from typing import Sequence

__all__ = ["FuncnetError", "LayerError"]


class FuncnetError(ValueError):
    """Base class of funcnet's errors about user input."""


class LayerError(FuncnetError):
    """A layer was given an input, hyperparameter or parameter it cannot take.

    `where` lists the layers from the outermost serial inwards, e.g.
    ["layer 3 (serial)", "layer 1 (dense)"], so nested models give a full path.
    """

    def __init__(self, message: str, where: Sequence[str] = ()):
        self.message = message
        self.where = tuple(where)
        prefix = " > ".join(self.where)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def inside(self, label: str) -> LayerError:
        return LayerError(self.message, (label,) + self.where)
