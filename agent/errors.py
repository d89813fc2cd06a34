"""The error every step of container setup raises, with the config.json field it is about."""

from __future__ import annotations


class SetupError(Exception):
    """A step of container setup failed; ``pointer`` names the config.json field."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer
