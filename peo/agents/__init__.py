"""The agent layer: a model as an advisory node (docs/agents.md).

- :mod:`.tools`: ``@app.tool`` and :class:`~.tools.Tool`, a tool's schema and call digest;
- :mod:`.mcp_tools`: the tools of MCP servers (``peo.mcp.stdio``, ``peo.mcp.http``).
"""

from __future__ import annotations

from .tools import Tool, ToolArgumentsError, call_digest, canonical_arguments, tool_from_function

__all__ = ["Tool", "ToolArgumentsError", "call_digest", "canonical_arguments", "tool_from_function"]
