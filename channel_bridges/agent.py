"""`crm-mcp agent`: the offline answering agent, an MCP client of the CRM with the `agent` role.

One loop: claim_inbound (long-poll) -> when the escalation rules say so (legal threat, refund or
pricing dispute, a request for a person, very negative sentiment, repeated unanswered questions)
escalate_to_human and send the holding reply; otherwise search_knowledge_base with the customer's
text and, when the best hit is labelled relevant, send_response with its passage and source;
otherwise escalate with the holding reply. No model: the words sent are fixed text and knowledge
base passages (agent_policy.py), never customer text or customer records.

Fail closed: a tool error the agent cannot resolve ends in an escalation and the holding reply.
When the CRM cannot be reached the turn is abandoned: the lease lapses and the work returns to
the queue for this or another agent. Replies carry idempotency_key 'agent:<message_id>', so a
turn repeated after a lapse never sends twice. Several agents can run at once (the queue leases).
Each turn is one log line with ids, the decision, the article used and the latency, and one
record in the CRM (record_agent_turn: tools called, articles, decision, latency) for staff review
and the metrics; a record that fails is logged and never holds up the reply."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from .agent_policy import HOLDING_REPLY, Decision, compose_answer, customer_text, rule_reason
from .connection import CrmConnection, CrmRejected, CrmTarget, CrmUnavailable
from .logs import configure, event
from .retry import Backoff

if TYPE_CHECKING:  # the model brain (and the openai package) load only for --llm openai
    from .agent_llm import LlmBrain, TurnOutcome

log = logging.getLogger("crm_mcp.agent")

QUERY_CHARS = 2000  # search_knowledge_base's query limit


@dataclass
class AgentStats:
    turns: int = 0
    answered: int = 0
    escalated: int = 0
    abandoned: int = 0


@dataclass
class Agent:
    target: CrmTarget
    lease_s: float = 120.0
    wait_s: float = 20.0
    # Test hook: pause after a claim, so a test can kill the agent mid-turn. Never set in production.
    turn_delay_s: float = 0.0
    # --llm openai: the model brain (agent_llm.py) answers what the rules let through; None: offline.
    brain: LlmBrain | None = None
    stats: AgentStats = field(default_factory=AgentStats)
    _stop: anyio.Event = field(default_factory=anyio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=15.0)
        failures = 0
        async with CrmConnection(self.target) as crm:
            while not self._stop.is_set():
                try:
                    got = await crm.call("claim_inbound", timeout_s=self.wait_s + 30, lease_s=self.lease_s, wait_s=self.wait_s)
                except CrmUnavailable as exc:
                    failures += 1
                    event(log, "claim_unavailable", logging.WARNING, error=str(exc)[:200])
                    await anyio.sleep(backoff.delay(failures))
                    continue
                except CrmRejected as exc:  # a wrong token or role: nothing this process can fix by retrying fast
                    failures += 1
                    event(log, "claim_rejected", logging.ERROR, error=str(exc)[:300])
                    await anyio.sleep(backoff.delay(failures))
                    continue
                failures = 0
                work = got.get("work")
                if work is not None:
                    await self.turn(crm, work)

    async def turn(self, conn: CrmConnection, work: dict[str, Any]) -> Decision | None:
        started = time.perf_counter()
        crm = _Counting(conn)
        ids = {"message_id": work["message_id"], "conversation_id": work["conversation_id"],
               "ticket_number": work["ticket_number"], "attempt": work.get("attempt")}
        self.stats.turns += 1
        if self.turn_delay_s:
            await anyio.sleep(self.turn_delay_s)
        article: str | None = None
        reason = rule_reason(work)
        outcome: TurnOutcome | None = None
        try:
            try:
                if reason is None and self.brain is not None:
                    outcome = await self.brain.turn(crm, work, lambda body: self._reply(crm, work, body),
                                                    lambda why: self._escalate(crm, work, why))
                    decision = outcome.decision
                    article = outcome.article_ids[0] if outcome.article_ids else None
                elif reason is None:
                    search = await crm.call("search_knowledge_base", query=customer_text(work["text"])[:QUERY_CHARS] or "help")
                    answer = compose_answer(search, work["channel"])
                    if answer is not None:
                        await self._reply(crm, work, answer.body)
                        article = answer.article_id
                        decision: Decision = "answered"
                    else:
                        reason = "Agent found no relevant knowledge-base answer"
                        await self._escalate(crm, work, reason)
                        decision = "escalated_no_answer"
                else:
                    await self._escalate(crm, work, reason)
                    decision = "escalated_rule"
            except CrmRejected as exc:
                event(log, "agent_tool_error", logging.WARNING, **ids, error=str(exc)[:300])
                reason = "Agent could not complete the turn (tool error); needs a person"
                await self._escalate(crm, work, reason)
                decision = "escalated_error"
        except CrmUnavailable as exc:
            # Nothing half-sent can stay: replies are idempotent by message, so the next claim redoes the turn.
            self.stats.abandoned += 1
            event(log, "agent_turn_abandoned", logging.WARNING, **ids, error=str(exc)[:200])
            return None
        except CrmRejected as exc:  # even the escalation was refused: leave it to lapse for another try
            self.stats.abandoned += 1
            event(log, "agent_turn_abandoned", logging.ERROR, **ids, error=str(exc)[:300])
            return None
        if decision == "answered":
            self.stats.answered += 1
        else:
            self.stats.escalated += 1
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        event(log, "agent_turn", **ids, decision=decision, article_id=article,
              rules=[r["code"] for r in work.get("escalation_reasons") or []] or None, latency_ms=latency_ms,
              **(outcome.log_fields() if outcome else {}))
        try:
            await conn.call("record_agent_turn", message_id=work["message_id"], attempt=work.get("attempt") or 1,
                            decision=decision, reason=None if decision == "answered" else (outcome.reason if outcome else reason),
                            tools_called=crm.called, article_ids=outcome.article_ids if outcome else ([article] if article else []),
                            model=outcome.model if outcome and outcome.model else "offline",
                            prompt_tokens=outcome.prompt_tokens if outcome else 0,
                            completion_tokens=outcome.completion_tokens if outcome else 0, latency_ms=int(latency_ms))
        except (CrmUnavailable, CrmRejected) as exc:  # the customer has the reply; only the record is missing
            event(log, "agent_record_failed", logging.WARNING, **ids, error=str(exc)[:300])
        return decision

    async def _reply(self, crm: CrmConnection | _Counting, work: dict[str, Any], body: str) -> dict[str, Any]:
        return await crm.call("send_response", conversation_id=work["conversation_id"], body=body,
                              idempotency_key=f"agent:{work['message_id']}")

    async def _escalate(self, crm: CrmConnection | _Counting, work: dict[str, Any], reason: str) -> None:
        # Escalate first: should the holding reply then fail, a person still has the case.
        await crm.call("escalate_to_human", ticket_number=work["ticket_number"], reason=reason)
        await self._reply(crm, work, HOLDING_REPLY)


@dataclass
class _Counting:
    """The connection, noting each tool a turn calls (for its record)."""

    conn: CrmConnection
    called: list[str] = field(default_factory=list)

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        self.called.append(tool)
        return await self.conn.call(tool, **arguments)

    def __getattr__(self, name: str) -> Any:  # everything else (list_tools for the model brain) as the connection has it
        return getattr(self.conn, name)


async def serve(agent: Agent) -> None:
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    event(log, "stopping", signal=signal.Signals(signum).name)
                    agent.stop()
                    tg.cancel_scope.cancel()  # a turn in flight is dropped; its lease lapses back to the queue
                    return

        tg.start_soon(watch)
        event(log, "agent_started", crm=agent.target.mode, lease_s=agent.lease_s,
              llm="openai" if agent.brain else "offline", model=agent.brain.settings.model if agent.brain else None)
        await agent.run()
        tg.cancel_scope.cancel()


def main(*, server: str | None = None, token: str | None = None, lease_s: float = 120.0, wait_s: float = 20.0,
         turn_delay_s: float = 0.0, log_level: str = "INFO", llm: str | None = None, model: str | None = None) -> None:
    configure(log_level)
    if llm is None:  # a configured model means the model brain; a fresh install has none and runs offline
        llm = "openai" if model or os.environ.get("CRM_AGENT_MODEL") else "offline"
        if llm == "offline" and os.environ.get("OPENAI_BASE_URL"):
            # Not an error: `crm-mcp up` starts the agent without flags, and a shell may set this for other tools.
            event(log, "llm_not_configured", logging.WARNING,
                  detail="OPENAI_BASE_URL is set but no model (CRM_AGENT_MODEL or --model): running offline")
    brain = None
    if llm == "openai":
        from .agent_llm import LlmBrain, LlmSettings

        try:
            settings = LlmSettings.from_env(model)
        except ValueError as exc:  # the user's configuration: one line, exit 2
            print(f"crm-mcp agent: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        # A turn must end before its claim lapses, or another agent could answer the same message meanwhile.
        brain = LlmBrain(replace(settings, turn_timeout_s=min(settings.turn_timeout_s, max(5.0, lease_s - 10))))
    target = CrmTarget.from_env(server, token)
    if target.mode == "stdio":
        # The spawned server gets only the agent's tools.
        target = CrmTarget(serve_args=("--role", "agent"))
    anyio.run(serve, Agent(target, lease_s=lease_s, wait_s=wait_s, turn_delay_s=turn_delay_s, brain=brain))
