"""peo: persistent executable objects for long-running AI agents.

Layers (docs/architecture.md draws them; the core imports nothing from the shell and does
no I/O, reads no clock and draws no randomness of its own):

- core (``peo.core``): ``model`` (values), ``codec`` (cattrs + msgpack), ``crypto``
  (Ed25519), ``memory`` (signed hash chain, fold), ``head`` (an object's head from its
  memory), ``wake`` (wake rules), ``policy`` (local rules), ``cycle`` (six actions)
- shell: ``config`` and ``keys`` (settings, files), ``store`` (SQLite, PostgreSQL),
  ``node`` (the worker, in parts), ``client``, ``cli``
- rigs: ``peo.testing`` (never imported by the runtime)

This module is the public surface; ``tests/test_public_api.py`` pins ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .agents.loop import AgentError as AgentError
from .agents.model import Model as Model
from .agents.model import ModelError as ModelError
from .agents.tools import Tool as Tool
from .app import App as App
from .core.crypto import Keyring as Keyring
from .core.crypto import SigningKey as SigningKey
from .core.model import Action as Action
from .core.model import CannotDo as CannotDo
from .core.model import Constraints as Constraints
from .core.model import Context as Context
from .core.model import Continue as Continue
from .core.model import Delegate as Delegate
from .core.model import Done as Done
from .core.model import Entry as Entry
from .core.model import Fail as Fail
from .core.model import Intent as Intent
from .core.model import ObjectInfo as ObjectInfo
from .core.model import ObjectSummary as ObjectSummary
from .core.model import Proposal as Proposal
from .core.model import Refine as Refine
from .core.model import Retry as Retry
from .core.model import Signal as Signal
from .core.model import Sleep as Sleep
from .core.model import Status as Status
from .core.model import Step as Step
from .core.model import WaitSignal as WaitSignal
from .core.policy import Policy as Policy
from .errors import ChildFailed as ChildFailed
from .errors import CodecError as CodecError
from .errors import ConflictError as ConflictError
from .errors import DivergedError as DivergedError
from .errors import InboxFullError as InboxFullError
from .errors import IntegrityError as IntegrityError
from .errors import InternalError as InternalError
from .errors import LeaseLostError as LeaseLostError
from .errors import NotFoundError as NotFoundError
from .errors import ObjectExistsError as ObjectExistsError
from .errors import ObjectFailedError as ObjectFailedError
from .errors import ObjectTerminatedError as ObjectTerminatedError
from .errors import PeoError as PeoError
from .errors import PolicyError as PolicyError
from .errors import SignalTimeout as SignalTimeout
from .errors import StepFailed as StepFailed
from .errors import StepTimeout as StepTimeout
from .errors import StoreError as StoreError
from .errors import TimeoutError as TimeoutError
from .errors import UsageError as UsageError
from .functions import Run as Run

if TYPE_CHECKING:
    from .client import Client as Client
    from .config import NodeSettings as NodeSettings
    from .node import Node as Node


def __getattr__(name: str) -> Any:
    # The shell (client, node: asyncio, stores) loads on first use, so that importing the
    # pure core (peo.core.cycle, peo.core.memory, ...) pulls in no I/O machinery at all.
    if name == "Client":
        from .client import Client

        return Client
    if name == "Node":
        from .node import Node

        return Node
    if name == "NodeSettings":
        from .config import NodeSettings

        return NodeSettings
    raise AttributeError(f"module 'peo' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AgentError",
    "App",
    "CannotDo",
    "ChildFailed",
    "Client",
    "CodecError",
    "ConflictError",
    "Constraints",
    "Context",
    "Continue",
    "Delegate",
    "DivergedError",
    "Done",
    "Entry",
    "Fail",
    "InboxFullError",
    "IntegrityError",
    "Intent",
    "InternalError",
    "Keyring",
    "LeaseLostError",
    "Model",
    "ModelError",
    "NodeSettings",
    "NotFoundError",
    "ObjectExistsError",
    "ObjectFailedError",
    "ObjectInfo",
    "ObjectSummary",
    "ObjectTerminatedError",
    "PeoError",
    "Policy",
    "PolicyError",
    "Proposal",
    "Refine",
    "Retry",
    "Run",
    "Signal",
    "SignalTimeout",
    "SigningKey",
    "Sleep",
    "Status",
    "Step",
    "StepFailed",
    "StepTimeout",
    "StoreError",
    "TimeoutError",
    "Tool",
    "UsageError",
    "WaitSignal",
]
