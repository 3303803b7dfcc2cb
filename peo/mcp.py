"""The tools of Model Context Protocol servers: ``peo.mcp.stdio(...)``, ``peo.mcp.http(...)``.

A short name for :mod:`peo.agents.mcp_tools` (see there and docs/agents.md). The ``mcp``
SDK (the ``peo[mcp]`` extra) is imported only when a server is used.
"""

from __future__ import annotations

from .agents.mcp_tools import MCPError, MCPServer, http, stdio

__all__ = ["MCPError", "MCPServer", "http", "stdio"]
