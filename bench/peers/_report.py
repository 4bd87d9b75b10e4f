"""The peers table: throughput, CPU per saga, latency at one rate, and what makes them fair."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from _load import PhaseResult

from peers._systems import Facts, Fairness


@dataclass
class Measured:
    """One system's row: its two phases and what it counted."""

    name: str
    fairness: Fairness
    checked: dict[str, int] = field(default_factory=dict)
    full: PhaseResult | None = None
    at_rate: PhaseResult | None = None
    facts: Facts = field(default_factory=Facts)
    # Messages per saga on the broker (systems on RabbitMQ), from the observer's counts.
    messages_per_saga: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fairness": asdict(self.fairness),
            "checked": self.checked,
            "full_speed": self.full.as_dict() if self.full else None,
            "offered_rate": self.at_rate.as_dict() if self.at_rate else None,
            "facts": asdict(self.facts),
            "messages_per_saga": self.messages_per_saga,
        }


def cpu_ms_per_saga(phase: PhaseResult) -> float:
    """CPU of every process counted, per saga of the phase, in milliseconds."""
    return 1000 * sum(phase.cpu_seconds.values()) / phase.sagas


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def markdown(
    *,
    header: str,
    measured: Sequence[Measured],
    rate: float,
    rate_basis: str,
    postgres_settings: Mapping[str, str],
    sagas: int,
    in_flight: int,
) -> str:
    """The table, the CPU by process, the fairness section and the checks, in Markdown."""
    lines = [
        header,
        "",
        f"| system | sagas/s | CPU ms per saga, all processes | p50 / p99 ms at {rate:g}/s |",
        "|---|--:|--:|--:|",
    ]
    for row in measured:
        full, at_rate = row.full, row.at_rate
        latency = (
            f"{at_rate.latency_ms['p50']:.0f} / {at_rate.latency_ms['p99']:.0f}"
            if at_rate is not None
            else "—"
        )
        rate_cell = _cell(full.sagas_per_second if full else None, "{:.0f}")
        cpu_cell = _cell(cpu_ms_per_saga(full) if full else None, "{:.1f}")
        lines.append(f"| {row.name} | {rate_cell} | {cpu_cell} | {latency} |")
    lines += [
        "",
        f"sagas/s: up to {sagas} fulfilled sagas at full speed, at most {in_flight} in flight, "
        "each system alone on the machine after a warm-up of 50 (a slow system times fewer: "
        "about 30 s at its warm-up rate, at least 200; here "
        + ", ".join(f"{row.name} {row.full.sagas}" for row in measured if row.full is not None)
        + "). CPU: user + system time from /proc of "
        "every process involved during that phase, driver included. Latency: from just before "
        f"a saga is started to the driver knowing its end, {rate:g} sagas/s offered to every "
        f"system ({rate_basis}), right after its full-speed phase"
        + (
            f", {measured[0].at_rate.sagas} sagas each (p99 by nearest rank)."
            if measured and measured[0].at_rate is not None
            else "."
        ),
        "",
        "CPU ms per saga at full speed, by process:",
        "",
        "| system | process | CPU ms per saga |",
        "|---|---|--:|",
    ]
    for row in measured:
        if row.full is None:
            continue
        for process, seconds in row.full.cpu_seconds.items():
            lines.append(f"| {row.name} | {process} | {1000 * seconds / row.full.sagas:.2f} |")
    settings = ", ".join(f"`{name}={value}`" for name, value in postgres_settings.items())
    lines += [
        "",
        "### Fairness",
        "",
        f"PostgreSQL (sagakit on PostgreSQL, DBOS): the machine's server, {settings}: every "
        "commit waits for its WAL to be flushed to disk. SQLite (sagakit on SQLite, Temporal's "
        "activities, the tuned Temporal server): WAL with `synchronous=NORMAL`: a commit is "
        "not fsynced (the WAL is, at checkpoints), so an operating-system crash or power loss "
        "may lose the last commits, a process crash loses nothing. RabbitMQ (sagakit, the "
        "null saga): persistent messages on quorum queues, each publish confirmed once the "
        "queue's Raft log has it.",
        "",
        "| system | durable writes | per fulfilled saga | counted |",
        "|---|---|---|---|",
    ]
    for row in measured:
        counted = []
        if row.messages_per_saga is not None:
            counted.append(f"{row.messages_per_saga:.1f} messages per saga")
        if row.facts.postgres_transactions is not None and row.facts.sagas:
            counted.append(
                f"{row.facts.postgres_transactions / row.facts.sagas:.1f} PostgreSQL "
                "transactions per saga (all of its run: check, warm-up, phase; the "
                "driver's reads included)"
            )
        counted += row.facts.notes
        lines.append(
            f"| {row.name} | {row.fairness.durability} | {row.fairness.per_saga} | "
            f"{'; '.join(counted) or '—'} |"
        )
    checked = [
        f"{row.name}: "
        + ", ".join(f"{count} {outcome}" for outcome, count in sorted(row.checked.items()))
        for row in measured
        if row.checked
    ]
    if checked:
        lines += [
            "",
            "Checked before timing (every saga ended as its order says; for the peers, one row "
            "per completed step, compensation rows in reverse order after a refusal, nothing "
            "left reserved): " + "; ".join(checked) + ".",
        ]
    unexpected = [
        f"{row.name} ({phase.phase}): {phase.unexpected_outcomes}"
        for row in measured
        for phase in (row.full, row.at_rate)
        if phase is not None and phase.unexpected_outcomes
    ]
    if unexpected:
        lines += ["", "Sagas that ended otherwise than expected: " + "; ".join(unexpected)]
    return "\n".join(lines) + "\n"
