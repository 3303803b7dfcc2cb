"""Self-healing in tiers and safe density: what a node does to keep its objects, and
itself, alive (issue 14; docs/operations.md).

- :mod:`.supervisor`: tier 1, restart in place (``peo fleet``);
- :mod:`.isolation`: tier 2's ``isolation="process"``, a step in a child process the node
  can kill (for time or memory) and survive;
- :mod:`.tiers`: tiers 3 and 4, known-good restore and quarantine with an alert;
- :mod:`.alerts`: the alert sinks (a command, a webhook) and their delivery;
- :mod:`.config`: configuration auto-repair (the last profile and policy that worked);
- :mod:`.postmortem`: the post-mortem of an object, told from its own memory;
- :mod:`.memory`: the memory budget (admission, shedding at a step boundary).

Modules are imported where they are used: importing peo loads none of their machinery.
"""
