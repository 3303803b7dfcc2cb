"""The node: the async shell that runs cycles against a store (see :mod:`.node`)."""

from .node import Node as Node

__all__ = ["Node"]
