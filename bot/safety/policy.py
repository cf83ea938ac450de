"""The one combine rule for the safety layers, recall-first.

* A patient's message is a **crisis** if ANY layer says crisis: the offline rules, the offline
  learned model (both already OR-ed in :func:`bot.safety.detector.triage`), Llama Guard or the
  moderation API.
* A layer that timed out, failed or answered something unreadable counts as **possible
  crisis** (a person sees the reply before the patient does) — never as "safe".
* A layer asking for review (Llama Guard S3/S4) also makes it a possible crisis.
* For a model reply, a remote layer that flags it, or that cannot be asked, blocks the reply:
  it is held for a specialist with ``blocked:<layer>`` on its review item.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from bot.safety.remote import LayerVerdict
from bot.safety.reply_checks import Failure, ReplyCheck
from bot.safety.verdict import Triage


def combine(offline: Triage, verdicts: Sequence[LayerVerdict]) -> Triage:
    """The offline verdict updated with the remote layers' opinions (never made less cautious)."""
    if not verdicts:
        return offline
    reasons = offline.reasons + tuple(v.reason() for v in verdicts)
    crisis_votes = [v for v in verdicts if v.crisis]
    if offline.crisis or crisis_votes:
        kind = offline.crisis_kind if offline.crisis else (crisis_votes[0].kind or crisis_votes[0].layer)
        score = max([offline.crisis_score, *(v.score for v in crisis_votes)])
        return replace(offline, crisis=True, crisis_kind=kind, crisis_score=score, possible_crisis=False, reasons=reasons)
    unsure = any(v.failed or v.label == "review" for v in verdicts)
    return replace(offline, possible_crisis=offline.possible_crisis or unsure, reasons=reasons)


def reply_failures(verdicts: Sequence[LayerVerdict]) -> list[Failure]:
    """Failures for the reply checks: a flagged reply, or a layer that could not be asked."""
    out = []
    for v in verdicts:
        if v.failed:
            out.append(Failure(v.layer, f"not checked: {v.error}"))
        elif v.label != "safe":
            out.append(Failure(v.layer, ",".join(v.categories) or v.label))
    return out


def with_reply_layers(checked: ReplyCheck, verdicts: Sequence[LayerVerdict]) -> ReplyCheck:
    extra = reply_failures(verdicts)
    return ReplyCheck(checked.failures + tuple(extra)) if extra else checked
