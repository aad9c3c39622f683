"""`none`: the unaccelerated model (every step, every token)."""
from dataclasses import dataclass

from methods.base import Method


class NoAcceleration(Method):
    name = "none"

    @dataclass(frozen=True)
    class Config:
        """No settings."""
