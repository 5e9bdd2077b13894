"""The web form as a Starlette app: GET / (the form), POST / (submit), GET /status/{token} (the
ticket's status and replies, refreshing itself), GET /healthz, and the stylesheet.

Every answer to bad input stores nothing: the checks (size, CSRF, form token, honeypot, rate
limit, fields) all run before ingest_message is called. The submission id inside the one-time
form token is the message's channel_message_id, so a second submit of the same form finds the
first message and shows the same ticket."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..connection import CrmRejected, CrmUnavailable
from ..logs import event
from ..runtime import Bridge
from .form import CATEGORIES, HONEYPOT, LIMITS, MAX_BODY_BYTES, check
from .security import CSRF_COOKIE, FormTokenError, RateLimit, Tokens

log = logging.getLogger("crm_mcp.bridge.webform")
HERE = Path(__file__).parent
UNTRUSTED = re.compile(r"^<untrusted-customer-content[^>]*>\n?(.*?)\n?</untrusted-customer-content>$", re.DOTALL)
SHOWN_REPLY = ("sent", "delivered", "read")
STATUS_LABEL = {
    "open": "Received: waiting for our team", "in_progress": "In progress", "waiting": "Waiting for your reply",
    "escalated": "With a specialist", "resolved": "Resolved", "closed": "Closed",
}
HEADERS = {
    # No script at all; styles only from this origin; the status link must not leak in a Referer.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def customer_text(value: str | None) -> str:
    """The customer's own words as they wrote them: the CRM wraps them for models (and turns '<'
    that starts a tag into '&lt;'); here they are shown as text, escaped by the template."""
    if not value:
        return ""
    m = UNTRUSTED.match(value)
    return m.group(1).replace("&lt;", "<") if m else value


def create_app(bridge: Bridge, *, secret: str, refresh_s: int = 10, rate_limit: RateLimit | None = None,
               product: str = "Flowbase Support") -> Starlette:
    tokens = Tokens(secret)
    limiter = rate_limit or RateLimit()
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(product=product, categories=CATEGORIES, limits=LIMITS)

    def page(template: str, code: int = 200, headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**ctx), status_code=code, headers={**HEADERS, **(headers or {})})

    def form_page(request: Request, *, values: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                  notice: str | None = None, code: int = 200) -> HTMLResponse:
        csrf = request.cookies.get(CSRF_COOKIE) or tokens.new_csrf()
        resp = page("form.html", code, values=values or {}, errors=errors or {}, notice=notice,
                    form_token=tokens.form_token(csrf), honeypot=HONEYPOT)
        resp.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        max_age=24 * 3600)
        return resp

    async def show_form(request: Request) -> Response:
        return form_page(request)

    async def submit(request: Request) -> Response:
        # 1. size and shape, before reading more than the limit
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return page("problem.html", 413, title="Message too large",
                        text=f"The form was larger than {MAX_BODY_BYTES // 1024} KB. Shorten your message and send it again.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return page("problem.html", 413, title="Message too large",
                            text=f"The form was larger than {MAX_BODY_BYTES // 1024} KB. Shorten your message and send it again.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return page("problem.html", 415, title="Unsupported form", text="Send the form from the support page.")
        raw = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=20))
        # 2. cross-site posts: the Origin (when sent) must be this site, the token must match the cookie
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return page("problem.html", 403, title="Form not accepted",
                        text="This form can only be sent from its own page. Open the support page and send it from there.")
        try:
            submission_id = tokens.submission_id(raw.get("form_token", ""), request.cookies.get(CSRF_COOKIE))
        except FormTokenError as exc:
            if exc.expired:
                return form_page(request, values=check(raw).values, code=400,
                                 notice="The form had been open too long and expired. Nothing was sent: check your message and send it again.")
            return page("problem.html", 403, title="Form not accepted",
                        text="The form's security check failed (cookies may be blocked for this site). Nothing was sent: "
                             "allow cookies for this page, reload it and send the form again.")
        # 3. the honeypot: a field people never see, so never fill in
        if raw.get(HONEYPOT):
            return page("problem.html", 400, title="Form not accepted",
                        text="The form was filled in automatically, so it was not sent. If you are a person, reload the page and type your message.")
        # 4. per-address rate limit
        address = request.client.host if request.client else "unknown"
        wait = limiter.hit(address)
        if wait is not None:
            minutes = max(1, round(wait / 60))
            return page("problem.html", 429, headers={"Retry-After": str(int(wait) + 1)}, title="Too many messages",
                        text=f"You have sent several messages in a short time. Nothing was sent: please try again in about {minutes} minute{'s' if minutes != 1 else ''}.")
        # 5. the fields
        sub = check(raw)
        if not sub.ok:
            return form_page(request, values=sub.values, errors=sub.errors, code=400)
        v = sub.values
        meta = {"source": "web_form"}
        if v["category"]:
            meta["topic"] = v["category"]
        if v["order_number"]:
            meta["order_number"] = v["order_number"]
        try:
            result = await bridge.ingest(channel="web_form", channel_message_id=f"webform-{submission_id}",
                                         sender={"email": v["email"], "name": v["name"]}, subject=v["subject"],
                                         content=v["message"], metadata=meta)
        except CrmUnavailable:
            return form_page(request, values=v, code=503,
                             notice="We could not take your message just now. Nothing was sent: please send the form again in a minute.")
        except CrmRejected as exc:
            event(log, "ingest_refused", logging.WARNING, error=str(exc)[:200])
            return form_page(request, values=v, code=400,
                             notice="Your message could not be accepted. Please check the fields and send it again.")
        number = result["ticket"]["ticket_number"]
        link = request.url_for("status", token=tokens.status_token(number, result["conversation"]["conversation_id"]))
        return page("confirm.html", ticket_number=number, status_url=str(link), duplicate=result["duplicate"])

    async def status(request: Request) -> Response:
        found = tokens.read_status_token(request.path_params["token"])
        if found is None:
            return page("problem.html", 404, title="Link not recognised",
                        text="This status link is not valid. Use the link from your confirmation page exactly as it was given.")
        number, conv = found
        try:
            upd = await bridge.crm.call("get_ticket_updates", timeout_s=15, ticket_number=number, conversation_id=conv) \
                if bridge.crm is not None else None
        except CrmUnavailable:
            upd = None
        except CrmRejected:
            return page("problem.html", 404, title="Ticket not found",
                        text="We could not find this ticket any more. If you need help, send us a new message.")
        if upd is None:
            return page("problem.html", 503, title="Status unavailable", refresh_s=refresh_s,
                        text="We cannot show the status just now; this page will try again by itself.")
        messages = [
            {"mine": m["direction"] == "inbound", "at": m["at"], "text": customer_text(m["content"]),
             "author": "You" if m["direction"] == "inbound" else ("Support team" if m["role"] == "human" else "Support")}
            for m in upd["messages"] if m["direction"] == "inbound" or m.get("delivery_status") in SHOWN_REPLY
        ]
        return page("status.html", refresh_s=refresh_s, ticket_number=upd["ticket_number"],
                    status=upd["status"], status_label=STATUS_LABEL.get(upd["status"], upd["status"]),
                    subject=customer_text(upd["subject"]), messages=messages)

    return Starlette(routes=[
        Route("/", show_form, methods=["GET"]),
        Route("/", submit, methods=["POST"]),
        Route("/status/{token}", status, name="status"),
        Route("/healthz", bridge.healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ])
