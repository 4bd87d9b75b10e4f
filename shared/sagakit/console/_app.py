"""The console as a Starlette app: server-rendered pages over the tracker's store and the
participants' dead-letter queues, with cancel, re-drive, replay and purge for an operator.

Safety: the tracker serves it on 127.0.0.1 unless told otherwise; without an operator token
it is read-only; with one, an operator signs in with the token and gets a session cookie
(HttpOnly, SameSite=Strict) and every action is a POST that carries the session's CSRF
token. Pages mask personal data (client/_redaction.py); a dead letter's body shows it only
to a signed-in operator who asks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sagakit._exceptions import SagaError, SteeringRefused
from sagakit.client._dead_letters import DeadLetters, ParkedMessage
from sagakit.client._redaction import redact_value, redacted_body
from sagakit.client._steering import Action, steer
from sagakit.console._graph import flow_svg
from sagakit.console._queries import SagaFilter, decode_cursor, encode_cursor, saga_page
from sagakit.tracker._model import SagaState, TrackedEvent, summarize
from sagakit.tracker._store import TrackerStore

_HERE = Path(__file__).parent
_SESSION_COOKIE = "sagakit_operator"
_FACETS_SECONDS = 10.0
_SLOW_FACETS_MS = 25.0
_AGES = {
    "": (None, None),
    "lt1m": (None, timedelta(minutes=1)),
    "lt1h": (None, timedelta(hours=1)),
    "lt1d": (None, timedelta(days=1)),
    "gt1h": (timedelta(hours=1), None),
    "gt1d": (timedelta(days=1), None),
}
_AGE_LABELS = {
    "": "any age",
    "lt1m": "started < 1 min ago",
    "lt1h": "started < 1 h ago",
    "lt1d": "started < 1 day ago",
    "gt1h": "started > 1 h ago",
    "gt1d": "started > 1 day ago",
}


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """What the console needs besides the tracker's store.

    Attributes:
        broker_url: The broker, for the dead letters and the operator's actions.
        stuck_after: How long without an event makes a saga stuck.
        operator_token: The secret an operator signs in with; None: read-only.
        jaeger_url: Jaeger's UI (``http://127.0.0.1:16686``): trace ids link to it.
        page_size: Sagas per page.
    """

    broker_url: str
    stuck_after: timedelta = timedelta(seconds=60)
    operator_token: str | None = None
    jaeger_url: str | None = None
    page_size: int = 50


class _Guard:
    """The operator's session and its CSRF token, both derived from the operator token."""

    def __init__(self, token: str | None) -> None:
        self.enabled = bool(token)
        self._key = hashlib.sha256((token or "").encode()).digest()

    def _sign(self, purpose: str, nonce: str) -> str:
        return hmac.new(self._key, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, request: Request) -> str | None:
        """The session's nonce when the request comes from a signed-in operator."""
        if not self.enabled:
            return None
        cookie = request.cookies.get(_SESSION_COOKIE, "")
        nonce, _, signature = cookie.partition(".")
        if nonce and hmac.compare_digest(signature, self._sign("session", nonce)):
            return nonce
        return None

    def csrf(self, request: Request) -> str:
        nonce = self.session(request)
        return self._sign("csrf", nonce) if nonce else ""

    def token_matches(self, given: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(given.encode(), (token or "").encode())

    async def check_action(self, request: Request) -> dict[str, str] | Response:
        """The action's form, or the response that refuses it."""
        if not self.enabled:
            return PlainTextResponse("read-only: no operator token is set", status_code=403)
        nonce = self.session(request)
        if nonce is None:
            return PlainTextResponse("sign in as an operator first", status_code=403)
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
            return PlainTextResponse("cross-site request refused", status_code=403)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not hmac.compare_digest(form.get("csrf", ""), self._sign("csrf", nonce)):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        return form


def _age(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = max(0, int((now - value).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _gap(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"+{seconds:.2f} s"
    return f"+{seconds / 60:.1f} min"


def _plain(value: Any) -> Any:
    """AMQP header values (tables, arrays, bytes, times) as JSON values."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _payload(event: TrackedEvent) -> dict[str, Any] | None:
    if not event.body:
        return None
    try:
        document = json.loads(event.body)
    except ValueError:
        return None
    payload = document.get("payload") if isinstance(document, dict) else None
    if not isinstance(payload, dict):
        return None
    redacted: dict[str, Any] = redact_value(payload)
    return redacted


def console_app(store: TrackerStore, settings: ConsoleSettings) -> Starlette:
    """The console over ``store`` (whose schema must exist), as an ASGI app."""
    spec = store.spec
    guard = _Guard(settings.operator_token)
    templates = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    facets_cache: dict[str, Any] = {}
    templates.globals.update(states=[s.value for s in SagaState], ages=_AGE_LABELS)

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        template = templates.get_template(name)
        html = template.render(
            request=request,
            spec=spec,
            operator=guard.session(request) is not None,
            guarded=guard.enabled,
            csrf=guard.csrf(request),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "same-origin"
        return response

    def _filter(request: Request) -> tuple[SagaFilter, dict[str, str]]:
        params = request.query_params
        state = params.get("state") or None
        age = params.get("age", "")
        min_age, max_age = _AGES.get(age, (None, None))
        chosen = {
            key: params.get(key, "")
            for key in ("state", "stuck", "step", "reason", "q", "age")
            if params.get(key)
        }
        query = SagaFilter(
            state=SagaState(state) if state in {s.value for s in SagaState} else None,
            stuck=params.get("stuck") == "1",
            step=params.get("step") or None,
            reason=params.get("reason") or None,
            search=params.get("q") or None,
            min_age=min_age,
            max_age=max_age,
            after=decode_cursor(params.get("after")),
            limit=settings.page_size,
        )
        return query, chosen

    async def sagas(request: Request) -> Response:
        began = time.perf_counter()
        query, chosen = _filter(request)
        now = datetime.now(UTC)
        partial = request.query_params.get("partial") == "1"
        # The filters' counts read whole indexes: on a large store (when they take long)
        # they are refreshed every few seconds, not on every page (nor on the live refresh,
        # which does not show them).
        fresh = time.monotonic() > facets_cache.get("until", 0.0)
        page = await saga_page(
            store, query, stuck_after=settings.stuck_after, now=now, facets=fresh and not partial
        )
        if page.facets:
            slow = page.facets_ms > _SLOW_FACETS_MS
            facets_cache.update(
                until=time.monotonic() + (_FACETS_SECONDS if slow else 0.0), found=page.facets
            )
        else:
            page.facets.update(facets_cache.get("found", {}))
        rows = [
            {
                "row": row,
                "age": _age(row.started_at, now),
                "idle": _age(row.last_event_at, now),
                "stuck": row.stuck_reason(now=now, stuck_after=settings.stuck_after),
            }
            for row in page.rows
        ]
        next_link = (
            "/sagas?" + urlencode({**chosen, "after": encode_cursor(page.next_cursor)})
            if page.next_cursor
            else None
        )
        context: dict[str, Any] = {
            "rows": rows,
            "page": page,
            "chosen": chosen,
            "first_link": "/sagas?" + urlencode(chosen),
            "next_link": next_link,
            "paged": query.after is not None,
            "steps": [s.name for s in spec.steps],
            "now": now,
            "render_ms": lambda: (time.perf_counter() - began) * 1000,
        }
        return render(request, "_rows.html" if partial else "sagas.html", **context)

    async def saga(request: Request) -> Response:
        saga_id = request.path_params["saga_id"]
        events = await store.events(saga_id)
        if not events:
            return render(request, "missing.html", status_code=404, saga_id=saga_id)
        view = summarize(spec, events)
        now = datetime.now(UTC)
        by_id = {e.event_id: e for e in events}
        timeline = []
        previous: datetime | None = None
        for event in events:
            cause = by_id.get(event.causation_id or "")
            timeline.append(
                {
                    "event": event,
                    "gap": _gap((event.occurred_at - previous).total_seconds()) if previous else "",
                    "cause": cause,
                    "payload": _payload(event),
                }
            )
            previous = event.occurred_at
        start = next((e for e in events if e.event_type == spec.start_event), events[0])
        fields = _payload(start) or {}
        svg = flow_svg(
            spec,
            seen={e.event_type for e in events},
            waiting=view.current_step,
            failed_step=view.failed_step,
        )
        jaeger = (
            f"{settings.jaeger_url.rstrip('/')}/trace/{view.trace_id}"
            if settings.jaeger_url and view.trace_id
            else None
        )
        return render(
            request,
            "saga.html",
            view=view,
            timeline=timeline,
            fields=json.dumps(fields, indent=2, ensure_ascii=False),
            svg=Markup(svg),
            jaeger=jaeger,
            stuck=view.stuck_reason(now=now, stuck_after=settings.stuck_after),
            age=_age(view.started_at, now),
            message=request.query_params.get("message"),
        )

    async def act(request: Request) -> Response:
        checked = await guard.check_action(request)
        if isinstance(checked, Response):
            return checked
        saga_id = request.path_params["saga_id"]
        if request.path_params["action"] not in {a.value for a in Action}:
            return PlainTextResponse("no such action", status_code=404)
        action = Action(request.path_params["action"])
        try:
            sent = await steer(store, settings.broker_url, saga_id, action, operator="console")
            message = (
                f"{action.value}: {sent.event.event_type} sent to {sent.queue} "
                f"({sent.participant}, step {sent.step})"
            )
        except SteeringRefused as refused:
            message = f"{action.value} refused: {refused.why}"
        except SagaError as exc:
            message = f"{action.value} failed: {exc}"
        return RedirectResponse(
            f"/sagas/{saga_id}?" + urlencode({"message": message}), status_code=303
        )

    async def dead_letters(request: Request) -> Response:
        began = time.perf_counter()
        personal = request.query_params.get("personal") == "1" and (
            guard.session(request) is not None
        )
        error = None
        parked: list[ParkedMessage] = []
        try:
            async with DeadLetters(settings.broker_url, services=spec.participants()) as dlq:
                parked = await dlq.parked()
        except SagaError as exc:
            error = str(exc)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in parked:
            groups.setdefault((entry.service, entry.reason_code), []).append(
                {
                    "entry": entry,
                    "body": redacted_body(entry.body, show_personal_data=personal),
                    "headers": json.dumps(
                        _plain(entry.headers) if personal else redact_value(_plain(entry.headers)),
                        indent=2,
                        ensure_ascii=False,
                    ),
                }
            )
        return render(
            request,
            "dead_letters.html",
            groups=sorted(groups.items()),
            total=len(parked),
            error=error,
            personal=personal,
            message=request.query_params.get("message"),
            took_ms=(time.perf_counter() - began) * 1000,
        )

    async def dead_letter_action(request: Request) -> Response:
        checked = await guard.check_action(request)
        if isinstance(checked, Response):
            return checked
        action = request.path_params["action"]
        if action not in {"replay", "purge"}:
            return PlainTextResponse("no such action", status_code=404)
        service = checked.get("service", "")
        if service not in spec.participants():
            return PlainTextResponse("unknown service", status_code=400)
        ids = [checked["id"]] if checked.get("id") else None
        reason = checked.get("reason") or None
        if ids is None and reason is None:
            return PlainTextResponse("name a message or a reason", status_code=400)
        try:
            async with DeadLetters(settings.broker_url, services=[service]) as dlq:
                if action == "replay":
                    done = len(await dlq.replay(ids, reason=reason))
                else:
                    done = await dlq.purge(ids, reason=reason)
            message = f"{action}: {done} message(s) of {service}"
        except SagaError as exc:
            message = f"{action} failed: {exc}"
        return RedirectResponse("/dead-letters?" + urlencode({"message": message}), status_code=303)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "login.html", failed=False)
        form = await request.form()
        given = str(form.get("token", ""))
        if not guard.token_matches(given, settings.operator_token):
            return render(request, "login.html", status_code=403, failed=True)
        response = RedirectResponse("/sagas", status_code=303)
        response.set_cookie(
            _SESSION_COOKIE,
            guard.new_session(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=8 * 3600,
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/sagas", status_code=303)
        response.delete_cookie(_SESSION_COOKIE)
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/sagas", status_code=302)

    return Starlette(
        routes=[
            Route("/", home),
            Route("/sagas", sagas),
            Route("/sagas/{saga_id}", saga),
            Route("/sagas/{saga_id}/{action:str}", act, methods=["POST"]),
            Route("/dead-letters", dead_letters),
            Route("/dead-letters/{action:str}", dead_letter_action, methods=["POST"]),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]
    )
