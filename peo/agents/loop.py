"""``@app.agent``: the agent loop, a durable function whose steps are model and tool calls.

The model is an *advisory node*: each model call is one recorded step (its response is in
memory, so a node that takes the object over never asks the model again for it), and what
the model proposes is carried out only if the node's policy allows it
(:mod:`peo.core.agent_rules`): a tool the policy does not list, or a delegation to a
handler it does not list, is refused, recorded, and shown to the model as refused. Budgets
are checked before each model call. A tool that needs approval waits, dormant, for an
``approve`` signal naming the digest of that exact call; a non-idempotent tool's start is
recorded before it runs, so a call whose node died mid-way is *outcome unknown* and is
never run blindly again (its ``reconcile`` hook, or a human, decides).

The model's choices map onto peo's proposals through built-in control tools: ``finish``
ends the object (Done), ``ask_human`` waits for a ``human`` signal, ``delegate`` starts a
child object and waits for it, ``wait`` sleeps, ``refine_goal`` refines the goal,
``cannot_do`` ends the object as failed with the capability it lacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.agent_rules import ScopeRules, Usage
from ..core.policy import Policy
from ..errors import ChildFailed, PeoError, UsageError
from ..functions import Run
from ..functions.records import record_key
from .episodic import Buffer, apply_consolidation, needs_consolidation, split_point
from .memory import MEMORY_TOOLS, consolidate, memory_tool, with_reserve
from .model import Model, complete
from .tools import Tool, ToolArgumentsError, call_digest

__all__ = ["APPROVE_SIGNAL", "CONTROL_TOOLS", "HUMAN_SIGNAL", "RESOLVE_SIGNAL", "AgentError", "agent_function"]

APPROVE_SIGNAL = "approve"  # payload: {"digest", "call", "approve": bool, "reason"}
HUMAN_SIGNAL = "human"  # the answer to ask_human: any payload
RESOLVE_SIGNAL = "resolve"  # a human's word on a call whose outcome is unknown: {"call", "result"}
RESULT_CHARS = 8000  # of a tool's result shown to the model
RESULT_BYTES = 65_536  # of a tool's result recorded in memory

_OBJECT: dict[str, Any] = {"type": "object"}
CONTROL_TOOLS: dict[str, dict[str, Any]] = {
    "finish": {"description": "End the task with its result.",
               "parameters": {"type": "object", "properties": {"result": {"description": "the result"}},
                              "required": ["result"]}},
    "ask_human": {"description": "Ask a human a question and wait for the answer.",
                  "parameters": {"type": "object", "properties": {"question": {"type": "string"}},
                                 "required": ["question"]}},
    "delegate": {"description": "Give a sub-task to another agent or handler and wait for its result.",
                 "parameters": {"type": "object", "properties": {"handler": {"type": "string"}, "goal": _OBJECT},
                                "required": ["handler", "goal"]}},
    "wait": {"description": "Wait for a number of seconds before going on.",
             "parameters": {"type": "object", "properties": {"seconds": {"type": "number"}},
                            "required": ["seconds"]}},
    "refine_goal": {"description": "Replace the task's goal with a refined one.",
                    "parameters": {"type": "object", "properties": {"goal": _OBJECT}, "required": ["goal"]}},
    "cannot_do": {"description": "Say that the task needs a capability you do not have, and stop.",
                  "parameters": {"type": "object", "properties": {"capability": {"type": "string"},
                                                                 "reason": {"type": "string"}},
                                 "required": ["capability"]}},
    **MEMORY_TOOLS,  # recall, remember, forget: the identity's long-term facts (peo.agents.memory)
}


class AgentError(PeoError):
    """The agent ends without success: a budget is exhausted, or it cannot do the task."""

    retryable = False

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


def _spec(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + f"... [{len(text) - RESULT_CHARS} more]"


def _plain(value: Any) -> Any:
    """``value`` as JSON data (what memory records of a tool's result), cut to size."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text.encode()) > RESULT_BYTES:
        return {"truncated": text[:RESULT_BYTES // 2]}
    return json.loads(text)


async def _call_tool(tool: Tool, arguments: dict[str, Any], key: str, timeout: float) -> dict[str, Any]:
    """Run one tool call; a failure is a result the model sees, never an exception."""
    import asyncio

    try:
        result = await asyncio.wait_for(tool.call(arguments, key), timeout)
    except TimeoutError:
        return {"error": f"{tool.name} did not finish within {timeout:g} s", "class": "timeout"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:2000], "class": str(getattr(exc, "error_class", None)
                                                                        or type(exc).__name__)}
    return {"result": _plain(result)}


def _said(note: Any) -> dict[str, Any]:
    return {"result": _plain(note)}


def _judge(payload: Any, digest: str, call: str) -> tuple[str, str]:
    """What an ``approve`` signal says about the call waiting: ("approve"|"deny"|"refuse", why)."""
    if not isinstance(payload, dict):
        return "refuse", "an approval must carry {digest, call, approve}"
    if payload.get("digest") != digest:
        return "refuse", f"approval for {payload.get('digest')!r}, but the call waiting is {digest}"
    if payload.get("call") != call:
        return "refuse", f"stale approval: it was for call {payload.get('call')!r}, the call waiting is {call}"
    if payload.get("approve") is True:
        return "approve", str(payload.get("reason") or "")
    return "deny", str(payload.get("reason") or "no reason given")


class _Agent:
    """One run of the loop (re-created on each cycle; everything it knows comes from ``run``)."""

    def __init__(self, run: Run, model: Model, instructions: str, tools: Sequence[Tool], timeout: float,
                 buffer: Buffer | None = None):
        self.run, self.model, self.timeout = run, model, timeout
        self.buffer = buffer  # the episodic buffer's budget (None: the conversation grows unbounded)
        step = run.step_now
        policy = step.policy if isinstance(step.policy, Policy) else Policy()
        self.policy = policy
        self.rules: ScopeRules = policy.agents.for_scope(step.context.trust_scope)
        self.tools = {t.name: t for t in tools}
        offered = [t.spec() for t in tools if self.rules.tool_allowed(t.name)]
        control = dict(CONTROL_TOOLS)
        if not self.rules.handlers:
            control.pop("delegate")
        self.specs = offered + [_spec(n, c["description"], c["parameters"]) for n, c in control.items()]
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": instructions},
            {"role": "user", "content": _task(run.goal)},
        ]
        self.used = Usage()
        self.created_ns = step.memory[0].timestamp if step.memory else time.time_ns()

    async def loop(self) -> Any:
        run = self.run
        while True:
            buffer = self.buffer
            upto = split_point(self.messages, buffer.keep_turns, buffer.memory_tokens) \
                if buffer is not None and needs_consolidation(self.messages, buffer.memory_tokens) else None
            if buffer is not None and upto is not None:  # consolidate before the buffer can overflow
                if not run.recorded_next():  # its own check, with its reserve (peo.agents.memory.with_reserve)
                    problem = self.rules.budget_problem(with_reserve(Usage(
                        self.used.model_calls, self.used.tokens, self.used.cost,
                        (time.time_ns() - self.created_ns) / 1e9, self.used.children), buffer))
                    if problem:
                        raise AgentError("budget", problem)
                step = run.step_now
                done = await run.step(consolidate, self.model, list(self.messages), upto, buffer.memory_tokens,
                                      step.store, step.context.identity, run.object_id, step.seq, name="consolidate")
                prompt, completion = int(done["usage"].get("prompt", 0)), int(done["usage"].get("completion", 0))
                self.used = Usage(self.used.model_calls + 1, self.used.tokens + prompt + completion,
                                  self.used.cost + self.policy.agents.cost(self.model.name, prompt, completion),
                                  0.0, self.used.children)
                self.messages = apply_consolidation(self.messages, str(done["summary"]), int(done["upto"]))
            if not run.recorded_next():  # a new call: the budget first (never re-checked on replay)
                used = Usage(self.used.model_calls, self.used.tokens, self.used.cost,
                             (time.time_ns() - self.created_ns) / 1e9, self.used.children)
                problem = self.rules.budget_problem(used)
                if problem:
                    raise AgentError("budget", problem)
            response = await run.step(complete, self.model, list(self.messages), self.specs, name="model")
            usage = response.get("usage") or {}
            prompt, completion = int(usage.get("prompt", 0)), int(usage.get("completion", 0))
            self.used = Usage(self.used.model_calls + 1, self.used.tokens + prompt + completion,
                              self.used.cost + self.policy.agents.cost(self.model.name, prompt, completion),
                              0.0, self.used.children)
            calls = response.get("tool_calls") or []
            said: dict[str, Any] = {"role": "assistant", "content": response.get("content")}
            if calls:
                said["tool_calls"] = [{"id": c["id"], "type": "function",
                                       "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
            self.messages.append(said)
            if not calls:  # a plain answer ends the task
                return response.get("content")
            for call in calls:
                done, value = await self.one(call)
                if done:
                    return value
                self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": _text(value)})

    async def one(self, call: Mapping[str, Any]) -> tuple[bool, Any]:
        """Carry out (or refuse) one proposed call: (True, result) if it ends the task."""
        name, raw = str(call["name"]), call.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            return False, {"error": f"the arguments of {name} are not valid JSON ({exc}); call it again with a "
                                    "JSON object"}
        if not isinstance(arguments, dict):
            return False, {"error": f"the arguments of {name} must be a JSON object"}
        if name in CONTROL_TOOLS:
            return await self.control(name, arguments)
        tool = self.tools.get(name)
        if tool is None or not self.rules.tool_allowed(name):
            why = "no such tool" if tool is None else f"the policy does not allow {name} in scope " \
                                                      f"{self.run.step_now.context.trust_scope!r}"
            return False, await self.run.step(_said, {"refused": f"{name}: {why}"}, name=f"refused:{name}")
        try:
            arguments = tool.check(arguments)
        except ToolArgumentsError as exc:
            return False, {"error": str(exc)}
        if tool.needs_approval or self.rules.needs_approval(name):
            verdict = await self.approval(tool, arguments)
            if verdict is not None:
                return False, verdict
        key = f"{self.run.idempotency_key}:{call['id']}"
        if tool.idempotent:
            return False, await self.run.step(_call_tool, tool, arguments, key, self.timeout, name=f"tool:{name}")
        ran: list[bool] = []

        def start() -> dict[str, Any]:
            ran.append(True)
            return {"tool": name, "digest": call_digest(name, arguments)}

        await self.run.step(start, name=f"start:{name}")
        if not ran:  # the start was recorded by an earlier run: did that run record the result?
            after = self.run.step_now.state.get(record_key(self.run.position))
            if not isinstance(after, dict) or after.get("name") != f"tool:{name}":
                return False, await self.unknown(tool, arguments, key)
        return False, await self.run.step(_call_tool, tool, arguments, key, self.timeout, name=f"tool:{name}")

    async def approval(self, tool: Tool, arguments: dict[str, Any]) -> dict[str, Any] | None:
        """Wait for the approval of this exact call: None if approved, else what the model sees."""
        run = self.run
        digest, ref = call_digest(tool.name, arguments), f"{run.object_id}:{run.position}"
        note = {"approval": {"tool": tool.name, "arguments": arguments, "digest": digest, "call": ref}}
        while True:
            signal = await run.wait_signal(APPROVE_SIGNAL, note=note)
            verdict, why = _judge(signal.payload, digest, ref)
            if verdict == "approve":
                return None
            if verdict == "deny":
                return {"denied": f"a human denied {tool.name}: {why}"}
            await run.step(_said, {"refused_approval": why, "sender": signal.sender}, name="approval refused")

    async def unknown(self, tool: Tool, arguments: dict[str, Any], key: str) -> dict[str, Any]:
        """A call whose start is recorded and whose result is not: its node died mid-way."""
        run = self.run
        if tool.reconcile is not None:
            fn = tool.reconcile

            async def reconcile() -> dict[str, Any]:
                import asyncio
                import inspect

                try:
                    out = fn(arguments, key)
                    if inspect.isawaitable(out):
                        out = await asyncio.wait_for(out, self.timeout)
                except Exception as exc:
                    return {"outcome_unknown": True, "error": f"reconcile raised {type(exc).__name__}: {exc}"}
                return {"outcome_unknown": True, "reconciled": _plain(out)}

            return dict(await run.step(reconcile, name=f"reconcile:{tool.name}"))
        ref = f"{run.object_id}:{run.position}"
        note = {"unknown": {"tool": tool.name, "arguments": arguments, "call": ref, "idempotency_key": key}}
        signal = await run.wait_signal(RESOLVE_SIGNAL, note=note)
        return {"outcome_unknown": True, "human": _plain(signal.payload)}

    async def control(self, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
        run = self.run
        if name in MEMORY_TOOLS:  # recall, remember, forget: recorded steps over the identity's facts
            step = run.step_now
            return False, await run.step(memory_tool, name, arguments, step.store, step.context.identity,
                                         run.object_id, step.seq, name=name)
        if name == "finish":
            return True, arguments.get("result")
        if name == "ask_human":
            signal = await run.wait_signal(HUMAN_SIGNAL, note={"question": str(arguments.get("question", ""))})
            return False, {"answer": _plain(signal.payload)}
        if name == "wait":
            seconds = arguments.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 2_592_000:
                return False, {"error": "wait needs seconds between 0 and 2592000"}
            await run.sleep(float(seconds))
            return False, {"waited": seconds}
        if name == "refine_goal":
            goal = arguments.get("goal")
            if not isinstance(goal, dict):
                return False, {"error": "refine_goal needs goal: a JSON object"}
            await run.refine(goal=goal)
            return False, {"goal": goal}
        if name == "cannot_do":
            capability = str(arguments.get("capability") or "?")
            raise AgentError("cannot_do", f"cannot do {capability}: {arguments.get('reason') or 'no reason given'}")
        handler, goal = arguments.get("handler"), arguments.get("goal")  # delegate
        if not isinstance(handler, str) or not isinstance(goal, dict):
            return False, {"error": "delegate needs handler (a name) and goal (a JSON object)"}
        if not self.rules.handler_allowed(handler):
            return False, await run.step(_said, {"refused": f"delegate to {handler}: not allowed by the policy"},
                                         name=f"refused:delegate:{handler}")
        if not run.recorded_next():
            problem = self.rules.budget_problem(self.used, children=1)
            if problem:
                return False, {"refused": problem}
        self.used = Usage(self.used.model_calls, self.used.tokens, self.used.cost, 0.0, self.used.children + 1)
        try:
            result = await run.child(handler, **goal)
        except ChildFailed as exc:
            return False, {"error": f"the delegated task failed: {exc}"}
        return False, {"result": _plain(result)}


def _task(goal: Mapping[str, Any]) -> str:
    for key in ("task", "prompt", "question"):
        if isinstance(goal.get(key), str) and len(goal) == 1:
            return str(goal[key])
    return json.dumps(dict(goal), ensure_ascii=False, sort_keys=True, default=str)


def agent_function(model: Model, instructions: str, tools: Sequence[Any], *, tool_timeout: float = 300.0,
                   memory_tokens: int | None = 16000, keep_turns: int = 4) -> Any:
    """The durable function of an agent (``@app.agent`` registers it)."""
    if not isinstance(model, Model):
        raise UsageError("an agent needs model=peo.Model('name', base_url=..., api_key_env=...)")
    if not isinstance(instructions, str):
        raise UsageError("an agent's instructions must be a string")
    try:  # now, at load: importing it takes a second or more, which would stall a node's loop mid-step
        import openai.resources.chat.completions  # noqa: F401  (the client loads it lazily, on the first call)
    except ImportError:
        raise UsageError("agents need the llm extra (the openai package): pip install 'peo[llm]'") from None
    names = [t.name for t in tools if isinstance(t, Tool)]
    clash = sorted({n for n in names if n in CONTROL_TOOLS} | {n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError(f"tool name(s) {', '.join(clash)} clash with another tool or a control tool "
                         f"({', '.join(CONTROL_TOOLS)})")

    buffer = Buffer(memory_tokens, keep_turns) if memory_tokens is not None else None

    local = [t for t in tools if isinstance(t, Tool)]
    servers = [t for t in tools if not isinstance(t, Tool)]  # MCP servers (peo.mcp)

    async def agent(run: Run, **goal: Any) -> Any:
        found = list(local)
        for server in servers:  # listed once, recorded: a replay does not connect to list them again
            specs = await run.step(server.list_tools, name=f"mcp:{server.name}")
            found += [server.tool_from_spec(spec) for spec in specs]
        clashing = sorted({t.name for t in found if t.name in CONTROL_TOOLS}
                          | {t.name for t in found if [u.name for u in found].count(t.name) > 1})
        if clashing:
            raise AgentError("tool_clash", f"tool name(s) {', '.join(clashing)} offered twice (an MCP server's "
                                           "tool clashes with another tool or a control tool)")
        return await _Agent(run, model, instructions, found, tool_timeout, buffer).loop()

    return agent
