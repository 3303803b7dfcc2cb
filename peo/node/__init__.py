"""The node: the async shell that runs cycles against a store."""

from ._node import Node as Node

__all__ = ["Node"]
