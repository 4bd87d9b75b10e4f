"""The end of a chaos run: what each service's own store says, against the ledger and the DLQs.

Every check names what it proves and, when it fails, whether a saga was stranded (it never
ended: stopped somewhere, or parked where nothing expected it), wrongly cancelled (for a
fault, or at another step or for another reason than the reference rules give), something
was lost (an effect, event or parked message that should exist does not), applied twice
(an effect or event exists more often than once, or a balance is off), or wrong (an outcome
or effect nothing should have produced).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sagakit import SagaSpec
from sagakit.client import ParkedMessage

from ._faults import MALFORMED_PREFIX, Malformed
from ._ledger import Ledger, Seen
from ._orders import ANY_STEP, INITIAL_STOCK, PlannedOrder
from ._stores import StoreState

# Reasons that name a fault rather than the order: a saga cancelled with one of these was
# cancelled because something was down, which no outage may cause.
TRANSIENT_REASONS = frozenset({"retries_exhausted", "deadline_exceeded"})


# How a message the broker dead-lettered (a quorum queue's delivery limit) shows in a DLQ:
# it kept failing, it was never parked by the service for a reason.
BROKER_DEAD_LETTERED = "broker:"


class Verdict(StrEnum):
    """What a failed check means."""

    STRANDED = "stranded"
    WRONGLY_CANCELLED = "wrongly cancelled"
    LOST = "lost"
    TWICE = "applied twice"
    WRONG = "wrong outcome"


@dataclass
class Check:
    """One property of the end state; ``failures`` names what broke it."""

    name: str
    verdict: Verdict
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    @property
    def ok(self) -> bool:
        return not self.failures


def expected_trail(spec: SagaSpec, failed_step: str | None) -> set[str]:
    """The event types a saga emits when ``failed_step`` fails (None: when fulfilled)."""
    trail = {spec.start_event}
    for step in spec.steps:
        if step.name == failed_step:
            trail.add(step.failure)
            trail.add(spec.cancelled_event)
            return trail
        trail.add(step.success)
        if failed_step is not None and step.compensated is not None:
            trail.add(step.compensated)
    return trail


@dataclass
class Audit:
    """Outcomes and checks of a run."""

    outcomes: Counter[str]
    cancel_reasons: Counter[str]
    parked_reasons: Counter[str]
    checks: list[Check]
    notes: dict[str, Any]

    def count(self, verdict: Verdict) -> int:
        """How many failures of that kind the checks found."""
        return sum(len(c.failures) for c in self.checks if c.verdict is verdict)

    @property
    def stranded(self) -> int:
        return self.count(Verdict.STRANDED)

    @property
    def wrongly_cancelled(self) -> int:
        return self.count(Verdict.WRONGLY_CANCELLED)

    @property
    def lost(self) -> int:
        return self.count(Verdict.LOST)

    @property
    def applied_twice(self) -> int:
        return self.count(Verdict.TWICE)

    @property
    def wrong(self) -> int:
        return self.count(Verdict.WRONG)


class _Auditor:
    def __init__(
        self,
        *,
        spec: SagaSpec,
        planned: Mapping[str, PlannedOrder],
        ledger: Ledger,
        parked: Iterable[ParkedMessage],
        stores: StoreState,
        malformed: Mapping[str, Malformed],
        duplicated: Iterable[Seen],
        consumers: Mapping[str, int],
    ) -> None:
        self.spec = spec
        self.consumers = consumers
        self.planned = planned
        self.ledger = ledger
        self.stores = stores
        self.malformed = malformed
        self.duplicated = list(duplicated)
        self.parked = list(parked)
        self.parked_sagas: dict[str, list[ParkedMessage]] = {}
        for entry in self.parked:
            expected = entry.id in malformed or entry.id.startswith(MALFORMED_PREFIX)
            if not expected and entry.saga_id:
                self.parked_sagas.setdefault(entry.saga_id, []).append(entry)
        self.checks: dict[str, Check] = {}

    def check(self, name: str, verdict: Verdict) -> Check:
        key = f"{name}|{verdict}"
        if key not in self.checks:
            self.checks[key] = Check(name, verdict)
        return self.checks[key]

    def run(self) -> Audit:
        outcomes: Counter[str] = Counter()
        cancel_reasons: Counter[str] = Counter()
        parked_reasons: Counter[str] = Counter()
        fulfilled: list[str] = []
        open_parked: list[str] = []
        for saga, plan in self.planned.items():
            events = self.ledger.by_saga.get(saga, [])
            types = {e.event_type for e in events}
            done = self.spec.completed_event in types
            cancelled = self.spec.cancelled_event in types
            ended = self.check(
                "every saga ended (or is parked where the run expects it)", Verdict.STRANDED
            )
            ended.checked += 1
            if done and cancelled:
                outcomes["fulfilled and cancelled"] += 1
                self.check("one terminal event per saga", Verdict.TWICE).fail(saga)
                continue
            if not (done or cancelled):
                if saga in self.parked_sagas:
                    outcomes["parked"] += 1
                    open_parked.append(saga)
                    entries = self.parked_sagas[saga]
                    for entry in entries:
                        parked_reasons[entry.reason.split(":")[0]] += 1
                    if not _may_park(plan, entries):
                        where = ", ".join(f"{e.service}: {e.reason[:80]!r}" for e in entries)
                        ended.fail(f"{saga} ({plan.scenario.value}) parked at {where}")
                else:
                    outcomes["pending"] += 1
                    last = events[-1].event_type if events else "nothing"
                    ended.fail(f"{saga} ({plan.scenario.value}) stopped after {last}")
                continue
            self._one_id_per_type(saga, events)
            if done:
                outcomes["fulfilled"] += 1
                fulfilled.append(saga)
                self._trail(saga, types, None)
                self._outcome(saga, plan, None, None)
                self._fulfilled_effects(saga, plan)
            else:
                cancellation = next(e for e in events if e.event_type == self.spec.cancelled_event)
                failed_step, reason = _cancellation(cancellation)
                outcomes[f"cancelled at {failed_step}"] += 1
                cancel_reasons[reason] += 1
                self._trail(saga, types, failed_step)
                self._outcome(saga, plan, failed_step, reason)
                self._cancelled_effects(saga, plan)
        self._stock(fulfilled, open_parked)
        self._money(fulfilled, open_parked)
        self._malformed()
        self._parked_as_expected()
        self._strangers()
        self._outbox()
        self._consumers()
        notes = self._duplicates()
        notes["cancelled for a fault (retries exhausted, deadline)"] = sum(
            cancel_reasons[reason] for reason in TRANSIENT_REASONS
        )
        notes["parked messages"] = len(self.parked)
        notes["ledger deliveries"] = self.ledger.deliveries
        notes["ledger messages"] = len(self.ledger.first)
        notes["inbox rows"] = self.stores.inbox_rows
        return Audit(
            outcomes=outcomes,
            cancel_reasons=cancel_reasons,
            parked_reasons=parked_reasons,
            checks=list(self.checks.values()),
            notes=notes,
        )

    # -- per saga ----------------------------------------------------------------------

    def _one_id_per_type(self, saga: str, events: list[Seen]) -> None:
        check = self.check("one event id per event type and saga", Verdict.TWICE)
        check.checked += 1
        ids: dict[str, set[str | None]] = {}
        for event in events:
            ids.setdefault(event.event_type or "", set()).add(event.event_id)
        for event_type, distinct in ids.items():
            if len(distinct) > 1:
                check.fail(f"{saga}: {event_type} x{len(distinct)}")

    def _trail(self, saga: str, types: set[str | None], failed_step: str | None) -> None:
        expected = expected_trail(self.spec, failed_step)
        missing = expected - types
        extra = {t for t in types if t is not None} - expected
        lost = self.check("each saga's events as the spec says: none missing", Verdict.LOST)
        twice = self.check("each saga's events as the spec says: none extra", Verdict.TWICE)
        lost.checked += 1
        twice.checked += 1
        if missing:
            lost.fail(f"{saga}: missing {sorted(missing)}")
        if extra:
            twice.fail(f"{saga}: extra {sorted(extra)}")

    def _outcome(
        self, saga: str, plan: PlannedOrder, failed_step: str | None, reason: str | None
    ) -> None:
        wrong = self.check("refused orders cancelled, never fulfilled", Verdict.WRONG)
        cancelled = self.check(
            "cancelled only by the rules: at their step, for their reason (never for a fault)",
            Verdict.WRONGLY_CANCELLED,
        )
        if plan.failed_step is None or failed_step is None:
            cancelled.checked += 1
            if plan.failed_step is None and failed_step is not None:
                cancelled.fail(f"{saga}: a valid order cancelled at {failed_step} ({reason})")
            wrong.checked += 1
            if plan.failed_step is not None and failed_step is None:
                wrong.fail(f"{saga}: {plan.scenario.value} was fulfilled")
            return
        cancelled.checked += 1
        if plan.failed_step in (ANY_STEP, failed_step) and reason == plan.reason:
            return
        cancelled.fail(
            f"{saga}: {plan.scenario.value} cancelled at {failed_step} ({reason}),"
            f" expected {plan.failed_step} ({plan.reason})"
        )

    def _fulfilled_effects(self, saga: str, plan: PlannedOrder) -> None:
        s = self.stores
        self._expect(
            "fulfilled: stock reserved once, as ordered",
            saga,
            s.reservations.get(saga) == "active" and s.reserved.get(saga) == plan.quantities(),
            f"reservation {s.reservations.get(saga)} {s.reserved.get(saga)}",
        )
        payment = s.payments.get(saga)
        charged = payment is not None and payment[2] == "captured" and payment[1] == plan.total
        self._expect(
            "fulfilled: charged once, the order's total",
            saga,
            charged and not s.refunds.get(payment[0] if payment else ""),
            f"payment {payment}",
        )
        self._expect(
            "fulfilled: exactly one shipment, booked",
            saga,
            s.shipments.get(saga) == "booked",
            f"shipment {s.shipments.get(saga)}",
        )
        self._notice(saga, "confirmation")

    def _cancelled_effects(self, saga: str, plan: PlannedOrder) -> None:
        s = self.stores
        self._expect(
            "cancelled: no stock held",
            saga,
            s.reservations.get(saga) in (None, "released"),
            f"reservation {s.reservations.get(saga)}",
        )
        payment = s.payments.get(saga)
        refunds = s.refunds.get(payment[0], []) if payment else []
        refunded = payment is None or (
            payment[2] == "refunded" and len(refunds) == 1 and refunds[0] == payment[1]
        )
        self._expect(
            "cancelled: not charged, or refunded once",
            saga,
            refunded,
            f"payment {payment} refunds {refunds}",
            twice=len(refunds) > 1,
        )
        self._expect(
            "cancelled: no active shipment",
            saga,
            s.shipments.get(saga) in (None, "cancelled"),
            f"shipment {s.shipments.get(saga)}",
        )
        self._notice(saga, "cancellation")

    def _notice(self, saga: str, kind: str) -> None:
        kinds = self.stores.notices.get(saga, [])
        check = self.check("exactly one notice per saga, of the right kind", Verdict.LOST)
        twice = self.check("exactly one notice per saga: never two", Verdict.TWICE)
        check.checked += 1
        twice.checked += 1
        if len(kinds) > 1:
            twice.fail(f"{saga}: {kinds}")
        elif kinds != [kind]:
            check.fail(f"{saga}: {kinds or 'none'}, expected {kind}")

    def _expect(self, name: str, saga: str, ok: bool, detail: str, *, twice: bool = False) -> None:
        check = self.check(name, Verdict.TWICE if twice else Verdict.LOST)
        check.checked += 1
        if not ok:
            check.fail(f"{saga}: {detail}")

    # -- balances ----------------------------------------------------------------------

    def _stock(self, fulfilled: list[str], open_parked: list[str]) -> None:
        s = self.stores
        held: Counter[str] = Counter()
        for saga, status in s.reservations.items():
            if status == "active":
                held.update(s.reserved.get(saga, {}))
        sold: Counter[str] = Counter()
        for saga in fulfilled:
            sold.update(self.planned[saga].quantities())
        for saga in open_parked:
            if s.reservations.get(saga) == "active":
                sold.update(s.reserved.get(saga, {}))
        conserved = self.check("stock conserved per SKU: initial - held = current", Verdict.TWICE)
        for sku, initial in INITIAL_STOCK.items():
            conserved.checked += 1
            current = s.stock.get(sku)
            if current != initial - held[sku]:
                conserved.fail(f"{sku}: {initial} - {held[sku]} held != {current}")
            check = self.check(
                "stock per SKU = initial - fulfilled orders",
                Verdict.TWICE
                if current is not None and current < initial - sold[sku]
                else Verdict.LOST,
            )
            check.checked += 1
            if current != initial - sold[sku]:
                check.fail(f"{sku}: {initial} - {sold[sku]} sold != {current}")

    def _money(self, fulfilled: list[str], open_parked: list[str]) -> None:
        s = self.stores
        excluded = set(open_parked)
        charged = sum(
            (p[1] for saga, p in s.payments.items() if saga not in excluded), Decimal("0")
        )
        refunded = sum(
            (
                amount
                for saga, p in s.payments.items()
                if saga not in excluded
                for amount in s.refunds.get(p[0], [])
            ),
            Decimal("0"),
        )
        owed = sum((self.planned[saga].total for saga in fulfilled), Decimal("0"))
        net = charged - refunded
        check = self.check(
            "charged - refunded = total of fulfilled orders",
            Verdict.TWICE if net > owed else Verdict.LOST,
        )
        check.checked += 1
        if net != owed:
            check.fail(f"{charged} - {refunded} = {net}, fulfilled orders total {owed}")

    # -- bad input, duplicates, outbox -------------------------------------------------

    def _malformed(self) -> None:
        parked: dict[str, list[ParkedMessage]] = {}
        for entry in self.parked:
            if entry.id in self.malformed:
                parked.setdefault(entry.id, []).append(entry)
        check = self.check("every bad message parked by each consumer, with a reason", Verdict.LOST)
        right = self.check("every bad message parked for the right reason", Verdict.WRONG)
        for message_id, sent in self.malformed.items():
            entries = parked.get(message_id, [])
            for participant in sorted(sent.parked_by):
                check.checked += 1
                mine = [e for e in entries if e.service == participant and e.reason]
                what = f"{sent.shape} as {sent.routing_key}"
                if not mine:
                    check.fail(f"{message_id} ({what}) at {participant}")
                    continue
                right.checked += 1
                if all(e.reason.startswith(BROKER_DEAD_LETTERED) for e in mine):
                    right.fail(
                        f"{message_id} ({what}) at {participant}: only the broker's"
                        f" delivery limit stopped it ({mine[0].reason[:80]!r})"
                    )
                elif sent.reasons and not any(_reason_is(e.reason, sent.reasons) for e in mine):
                    reasons = sorted({e.reason[:80] for e in mine})
                    right.fail(
                        f"{message_id} ({what}) at {participant}: {reasons},"
                        f" expected {' or '.join(sent.reasons)}"
                    )

    def _parked_as_expected(self) -> None:
        check = self.check("nothing parked that the run does not expect", Verdict.WRONG)
        ended = self.ledger.ended
        for entry in self.parked:
            check.checked += 1
            what = f"{entry.id} ({entry.event_type}) at {entry.service}: {entry.reason[:80]!r}"
            sent = self.malformed.get(entry.id)
            if sent is not None:
                if entry.service not in sent.parked_by:
                    check.fail(f"{what}, expected at {sorted(sent.parked_by)}")
                continue
            if entry.id.startswith(MALFORMED_PREFIX):
                continue  # garbage a consumer it was not routed to parked: see the checks above
            plan = self.planned.get(entry.saga_id)
            if plan is not None and entry.saga_id not in ended:
                continue  # a saga that stopped there: stranded (or allowed to park)
            check.fail(what)

    def _strangers(self) -> None:
        check = self.check("sagas nobody started changed nothing", Verdict.WRONG)
        injected = set(self.malformed) | {seen.message_id for seen in self.duplicated}
        for saga, events in self.ledger.by_saga.items():
            if saga in self.planned:
                continue
            check.checked += 1
            answered = [e.event_type for e in events if e.message_id not in injected]
            if answered:
                check.fail(f"{saga}: {answered} on the wire")
        s = self.stores
        effects: dict[str, Iterable[str]] = {
            "reservation": s.reservations,
            "payment": s.payments,
            "shipment": s.shipments,
            "notice": s.notices,
        }
        for effect, sagas in effects.items():
            for saga in sagas:
                if saga not in self.planned:
                    check.fail(f"{saga}: a {effect} for a saga nobody started")

    def _outbox(self) -> None:
        check = self.check("every committed event published (outbox drained)", Verdict.LOST)
        for service, pending in self.stores.pending_outbox.items():
            check.checked += 1
            if pending:
                check.fail(f"{service}: {pending} unsent")

    def _consumers(self) -> None:
        check = self.check(
            "one consumer per work queue at the end (none missing, no zombie)", Verdict.LOST
        )
        for queue, count in sorted(self.consumers.items()):
            check.checked += 1
            if count != 1:
                check.fail(f"{queue}: {count} consumers")

    def _duplicates(self) -> dict[str, Any]:
        sagas = {seen.saga_id for seen in self.duplicated}
        seen_twice = sum(1 for seen in self.duplicated if self.ledger.copies[seen.message_id] > 1)
        copies = sum(self.ledger.copies.values()) - len(self.ledger.copies)
        parked_copies = Counter((e.id, e.service) for e in self.parked if e.id in self.malformed)
        return {
            "duplicated events": len(self.duplicated),
            "duplicates seen on the exchange": seen_twice,
            "sagas given duplicates": len(sagas),
            "extra copies on the exchange (all causes)": copies,
            "malformed parked more than once": sum(1 for n in parked_copies.values() if n > 1),
        }


def _reason_is(reason: str, expected: Iterable[str]) -> bool:
    return any(what in reason for what in expected)


def _may_park(plan: PlannedOrder, entries: Iterable[ParkedMessage]) -> bool:
    if plan.may_park is None:
        return False
    participant, reason = plan.may_park
    return any(e.service == participant and _reason_is(e.reason, [reason]) for e in entries)


def _cancellation(event: Seen) -> tuple[str, str]:
    payload = json.loads(event.body).get("payload", {})
    return str(payload.get("failed_step", "?")), str(payload.get("reason", "?"))


def audit(
    *,
    spec: SagaSpec,
    consumers: Mapping[str, int],
    planned: Mapping[str, PlannedOrder],
    ledger: Ledger,
    parked: Iterable[ParkedMessage],
    stores: StoreState,
    malformed: Mapping[str, Malformed],
    duplicated: Iterable[Seen],
) -> Audit:
    """Check the end state of a run."""
    return _Auditor(
        spec=spec,
        planned=planned,
        ledger=ledger,
        parked=parked,
        stores=stores,
        malformed=malformed,
        duplicated=duplicated,
        consumers=consumers,
    ).run()
