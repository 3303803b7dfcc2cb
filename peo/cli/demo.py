"""``peo demo``: the fleet demo (:mod:`peo.demo`), with the options after ``demo``."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import PeoError
from .parser import add_verb, positive_seconds, text_arg

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_demo", "register"]


_LLM_OPTIONS = (("llm_base_url", "--llm-base-url"), ("model", "--model"), ("api_key_env", "--api-key-env"))


def _load(agents: bool) -> ModuleType:
    if agents:
        from .. import demo_agents

        return demo_agents
    from .. import demo

    return demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Synchronous on purpose: the demo runs its own event loop and node processes."""
    agents = getattr(args, "agents", False)
    given = [flag for name, flag in _LLM_OPTIONS if getattr(args, name, None) is not None]
    problem = None
    if given and not agents:
        problem = f"{', '.join(given)} go with --agents (peo demo --agents --llm-base-url URL --model NAME)"
    elif given and getattr(args, "llm_base_url", None) is None:
        problem = "--model and --api-key-env need --llm-base-url URL (the server to ask)"
    elif getattr(args, "llm_base_url", None) is not None and getattr(args, "model", None) is None:
        problem = "--llm-base-url needs --model NAME (the model to ask)"
    if problem is not None:
        print(f"peo: error: {problem} (see `peo demo --help`)", file=sys.stderr)
        return 2
    try:
        demo = _load(agents)
    except (ImportError, PeoError) as exc:  # the agents demo needs the llm extra (openai, pydantic)
        extra = "; it needs the llm extra: pip install 'peo[llm]'" if agents and "peo[llm]" not in str(exc) else ""
        print(f"peo: error: the {'agents ' if agents else ''}demo is not available in this installation "
              f"({exc}){extra}", file=sys.stderr)
        return 1
    argv = [*(["--store", args.store] if args.store is not None else []),
            *(["--no-kill"] if args.no_kill else []),
            *(["--timeout", f"{args.timeout:g}"] if args.timeout is not None else []),
            *[a for name, flag in _LLM_OPTIONS if getattr(args, name, None) is not None
              for a in (flag, getattr(args, name))],
            *args.demo_args]
    try:
        return int(demo.main(argv) or 0)
    except SystemExit as exc:  # the demo's own argparse (--help, bad option)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _demo_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "demo", "run the demo: a fleet survives a node killed with SIGKILL",
                  "Run a fleet of sample agents on two node processes on the store, kill one with SIGKILL mid-run, "
                  "watch the other take over; ends by verifying every chain. The demo's handlers (research, "
                  "approval, planner, subtask, ...) are in peo.demo:app.\n\n"
                  "With --agents: six research agents (peo.demo_agents:app) on a scripted OpenAI-compatible model "
                  "server started by the demo (no network, no key), on a new store in a temporary directory unless "
                  "--store is given; one agent's tool call waits for a person's approval, which the demo answers "
                  "with peo approve; --llm-base-url URL --model NAME points the same agents at a real server.",
                  ["peo demo", "peo demo --store sqlite:///demo.db --no-kill", "peo demo --timeout 120",
                   "peo demo --agents",
                   "peo demo --agents --llm-base-url http://127.0.0.1:11434/v1 --model qwen2.5:7b",
                   "peo demo --agents --llm-base-url https://api.openai.com/v1 --model gpt-4o-mini "
                   "--api-key-env OPENAI_API_KEY"], cmd_demo)
    sp.add_argument("--no-kill", action="store_true", help="do not kill a node (for comparison)")
    sp.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                    help="give up after this many seconds (default 55; with --llm-base-url 300)")
    sp.add_argument("--agents", action="store_true",
                    help="the agents demo: research agents that ask a model, with an approval from the CLI")
    sp.add_argument("--llm-base-url", metavar="URL", type=text_arg("URL"),
                    help="with --agents: an OpenAI-compatible server to ask instead of the scripted one")
    sp.add_argument("--model", metavar="NAME", type=text_arg("model name"),
                    help="with --llm-base-url: the model to ask")
    sp.add_argument("--api-key-env", metavar="VAR", type=text_arg("variable name"),
                    help="with --llm-base-url: the environment variable holding the API key (default: none)")
    sp.set_defaults(demo_args=[])


_PARSERS = {"demo": _demo_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
