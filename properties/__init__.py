"""attncheck's property suite: strategies, oracle, targets and the invariant catalog for attention."""

from properties.targets import Capabilities, Target, declare

__all__ = ["Capabilities", "Target", "declare"]
