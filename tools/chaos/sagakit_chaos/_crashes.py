"""Crash points for a chaos run: a real SIGKILL at the worst moments, armed by environment.

sagakit's ``SAGAKIT_CRASH_AT`` kills a service after it committed and before it published
or acked, or in the middle of a compensation. Each start of a service gets one point (with
a marker prefix of its own, so that it fires once), until the run's budget is spent.
"""

from __future__ import annotations

import random
from pathlib import Path

from sagakit import SagaSpec
from sagakit.runtime import CrashPoint


class CrashPoints:
    """Arms one crash point at a time in each service; re-arms after it fires.

    Each arming gets a marker prefix of its own, so the point fires once; the budget caps
    how many are armed over the run (then a restarted service runs unarmed).

    Args:
        spec: The flow: which events each participant handles, and how.
        rng: Which point and event to arm.
        directory: Where the marker files go.
        budget: How many crash points to arm in all.
    """

    def __init__(self, spec: SagaSpec, *, rng: random.Random, directory: Path, budget: int) -> None:
        self.rng = rng
        self.directory = directory
        self.budget = budget
        self.choices = _crash_point_choices(spec)
        self.history: list[str] = []
        self._armed: dict[str, tuple[str, Path]] = {}

    def env(self, service: str) -> dict[str, str]:
        """``SAGAKIT_CRASH_*`` for the next start of ``service`` (unarmed once spent)."""
        if service in self._armed:
            point, marker = self._armed[service]  # armed and not fired: keep it
        elif self.budget > 0 and self.choices.get(service):
            self.budget -= 1
            point = self.rng.choice(self.choices[service])
            marker = self.directory / f"crash-{len(self.history) + 1:03d}"
            self._armed[service] = (point, marker)
            self.history.append(f"{service}={point}")
        else:
            return {"SAGAKIT_CRASH_AT": "", "SAGAKIT_CRASH_MARKER": ""}
        return {"SAGAKIT_CRASH_AT": point, "SAGAKIT_CRASH_MARKER": str(marker)}

    def fired(self, service: str) -> str | None:
        """The point that killed ``service``, if its armed one did (then it is disarmed)."""
        if service not in self._armed:
            return None
        point, marker = self._armed[service]
        if not Path(f"{marker}.{point.replace(':', '.', 1)}").exists():
            return None
        del self._armed[service]
        return point


def _crash_point_choices(spec: SagaSpec) -> dict[str, list[str]]:
    choices: dict[str, list[str]] = {}
    for step in spec.steps:
        mine = choices.setdefault(step.participant, [])
        for point in (CrashPoint.BEFORE_PUBLISH, CrashPoint.BEFORE_ACK):
            mine.append(f"{point.value}:{step.trigger}")
        for event in step.compensate_on:
            mine.append(f"{CrashPoint.MID_COMPENSATION.value}:{event}")
            mine.append(f"{CrashPoint.BEFORE_PUBLISH.value}:{event}")
    for reaction in spec.reactions:
        choices.setdefault(reaction.participant, []).append(
            f"{CrashPoint.BEFORE_ACK.value}:{reaction.trigger}"
        )
    return choices
