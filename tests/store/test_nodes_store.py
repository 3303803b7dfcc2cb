"""The node registry: what each node serves, when it was last seen, and what it says about itself."""

from __future__ import annotations

from peo.store import NodeRow, open_store

T0 = 1_700_000_000 * 10**9


async def test_nodes_are_listed_most_recent_first_with_their_notes(store_url: str) -> None:
    async with open_store(store_url) as s:
        await s.register_node("a", ["work", "chat"], now=T0)
        await s.register_node("b", ["work"], now=T0 + 5, notes="policy p.toml is unusable: running on its copy")
        assert await s.nodes() == [
            NodeRow("b", ("work",), T0 + 5, "policy p.toml is unusable: running on its copy"),
            NodeRow("a", ("chat", "work"), T0, None)]
        await s.register_node("b", ["work"], now=T0 + 9)  # fixed: the note goes with the next registration
        assert [(n.id, n.notes) for n in await s.nodes(since=T0 + 1)] == [("b", None)]
