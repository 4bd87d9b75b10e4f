"""The flow drawn as SVG from the spec, with one saga's path on it.

The hops are the ones ``saga graph`` draws (every hop the runtime's rules produce, from
``all_paths``); the layout is a grid: the forward path on the top row, each step's failure
event under it, and its compensated event under that, so that the backward path runs right
to left along the bottom towards the cancellation. A saga's events colour the nodes they
reached and the hops between them; the step it waits on is drawn dashed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from html import escape

from sagakit.spec._checker import Hop, Move, all_paths
from sagakit.spec._spec import SagaSpec

_COL = 270
_ROW = 110
_NODE_W = 160
_NODE_H = 38
_PAD_X = 20
_PAD_Y = 24


@dataclass(frozen=True, slots=True)
class _Node:
    event: str
    kind: str  # start, event, completed, cancelled, failure, undone, reaction
    col: int
    row: int

    @property
    def x(self) -> int:
        return _PAD_X + self.col * _COL

    @property
    def y(self) -> int:
        return _PAD_Y + self.row * _ROW


def _layout(spec: SagaSpec, hops: list[Hop]) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {spec.start_event: _Node(spec.start_event, "start", 0, 0)}
    last = len(spec.steps)
    for col, step in enumerate(spec.steps, start=1):
        kind = "completed" if step.success == spec.completed_event else "event"
        nodes.setdefault(step.success, _Node(step.success, kind, col, 0))
        nodes.setdefault(step.failure, _Node(step.failure, "failure", col, 1))
        if step.compensated is not None:
            nodes.setdefault(step.compensated, _Node(step.compensated, "undone", col, 2))
    nodes.setdefault(spec.completed_event, _Node(spec.completed_event, "completed", last + 1, 0))
    nodes.setdefault(spec.cancelled_event, _Node(spec.cancelled_event, "cancelled", 0, 2))
    reactions = 0
    for hop in hops:
        if hop.move is Move.REACT:
            key = f"{hop.participant}: {hop.name}"
            nodes.setdefault(key, _Node(key, "reaction", reactions, 3))
            reactions += 1
    return nodes


def _target(hop: Hop) -> str:
    return hop.target if hop.target is not None else f"{hop.participant}: {hop.name}"


def flow_svg(
    spec: SagaSpec,
    *,
    seen: Collection[str] = (),
    waiting: str | None = None,
    failed_step: str | None = None,
) -> str:
    """The flow as an SVG document; ``seen`` are the event types one saga reached.

    Args:
        spec: The flow.
        seen: Event types of the saga; their nodes and the hops between them are marked.
        waiting: The step the saga waits on: its hop is drawn dashed.
        failed_step: The step that failed: its failure node is marked as the cause.
    """
    hops: dict[Hop, None] = {}
    for path in all_paths(spec):
        hops.update(dict.fromkeys(path.hops))
    nodes = _layout(spec, list(hops))
    seen_set = set(seen)
    width = _PAD_X * 2 + max(n.col for n in nodes.values()) * _COL + _NODE_W
    height = _PAD_Y * 2 + max(n.row for n in nodes.values()) * _ROW + _NODE_H
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(spec.saga_type)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="context-stroke"/></marker></defs>',
    ]
    waiting_trigger = None
    if waiting is not None:
        step = next((s for s in spec.steps if s.name == waiting), None)
        waiting_trigger = step.name if step is not None else None
    for hop in hops:
        source, target = nodes.get(hop.source), nodes.get(_target(hop))
        if source is None or target is None:
            continue
        taken = hop.source in seen_set and (
            _target(hop) in seen_set or (hop.move is Move.REACT and hop.source in seen_set)
        )
        classes = [f"hop {hop.move.value}"]
        if taken:
            classes.append("taken")
        if (
            waiting_trigger is not None
            and hop.name == waiting_trigger
            and hop.move in {Move.FORWARD, Move.UNDO}
            and hop.source in seen_set
            and _target(hop) not in seen_set
        ):
            classes.append("waiting")
        parts.append(_edge(source, target, hop, " ".join(classes)))
    failure_event = None
    if failed_step is not None:
        step = next((s for s in spec.steps if s.name == failed_step), None)
        failure_event = step.failure if step is not None else None
    for node in nodes.values():
        label = node.event.split(": ", 1)[-1] if node.kind == "reaction" else node.event
        classes = [f"node {node.kind}"]
        if node.event in seen_set:
            classes.append("seen")
        if node.event == failure_event:
            classes.append("cause")
        parts.append(
            f'<g class="{" ".join(classes)}" data-event="{escape(node.event)}">'
            f'<rect x="{node.x}" y="{node.y}" width="{_NODE_W}" height="{_NODE_H}" rx="8"/>'
            f'<text x="{node.x + _NODE_W / 2}" y="{node.y + _NODE_H / 2 + 4}">'
            f"{escape(label)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _edge(source: _Node, target: _Node, hop: Hop, classes: str) -> str:
    x1: float
    y1: float
    x2: float
    y2: float
    if target.row == source.row:
        if target.col > source.col:  # forward, left to right
            x1, y1 = source.x + _NODE_W, source.y + _NODE_H / 2
            x2, y2 = target.x, target.y + _NODE_H / 2
        else:  # backward, right to left
            x1, y1 = source.x, source.y + _NODE_H / 2
            x2, y2 = target.x + _NODE_W, target.y + _NODE_H / 2
    elif target.row > source.row:
        x1, y1 = (
            source.x + _NODE_W / 2 + (24 if target.col > source.col else -24),
            source.y + _NODE_H,
        )
        x2, y2 = target.x + _NODE_W / 2, target.y
    else:
        x1, y1 = source.x + _NODE_W / 2, source.y
        x2, y2 = target.x + _NODE_W / 2, target.y + _NODE_H
    label = {
        Move.FORWARD: hop.name,
        Move.FAIL: f"{hop.name} fails",
        Move.UNDO: f"undo {hop.name}",
        Move.CANCEL: "ends the saga",
        Move.REACT: hop.name,
    }[hop.move]
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2 - 5
    return (
        f'<g class="{classes}" data-step="{escape(hop.name)}">'
        f'<path d="M{x1},{y1} L{x2},{y2}" marker-end="url(#arrow)"/>'
        f'<text x="{mx}" y="{my}">{escape(label)}</text></g>'
    )
