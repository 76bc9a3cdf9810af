"""A small drip campaign on fastapi_futurecalls.

- Signing up schedules a welcome mail a couple of seconds later and two follow-ups, all
  under the identifier ``user-<id>``; unsubscribing cancels whatever has not been sent.
- Each activity pushes back one "we miss you" mail (schedule-once: ``if_exists="replace"``
  keeps a single pending one per user).
- A daily digest goes out at 08:00 UTC: a recurring call that every worker declares at
  startup, and that exists once.
- The mail provider takes at most 5 connections from all our pods together:
  ``fleet_limit = 5`` on the mail call. A password-reset mail is scheduled with
  ``priority=10``, so it never waits behind a backlog of drip mails, and the mail call
  uses its run's ``session.call.key`` as the provider's idempotency key.
- ``POST /admin/mail/pause`` stops sending mails while the provider is down (they are
  still scheduled); ``POST /admin/mail/resume`` sends them again.
- The operator dashboard is at ``/futurecalls/``, behind HTTP Basic authentication
  (``admin``/``admin`` unless ``DASHBOARD_USER`` and ``DASHBOARD_PASSWORD`` say otherwise),
  and Prometheus metrics at ``/metrics`` behind the same login.

The "mail" is a log line. Run it with ``make run`` (two uvicorn workers).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, Session

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
logger = logging.getLogger("example_app.mail")

# Which mail goes out when, counted from sign-up.
DRIP: list[tuple[str, timedelta]] = [
    ("welcome", timedelta(seconds=2)),
    ("getting-started tips", timedelta(days=1)),
    ("how is it going?", timedelta(days=7)),
]
IDLE_AFTER = timedelta(days=3)


class Signup(BaseModel):
    user_id: int
    email: str
    name: str


class Mail(BaseModel):
    user_id: int
    email: str
    name: str
    template: str


class SendMail(FutureCall[Mail]):
    max_attempts = 3  # a mail server hiccup should not lose the mail
    retry_backoff = timedelta(minutes=1)
    fleet_limit = 5  # the provider's connection limit, across every worker and pod

    async def invoke(self, session: Session, object: Mail | None) -> None:
        assert object is not None
        # A real provider gets session.call.key as its idempotency key: a retry of a run
        # that sent the mail but could not record it is then recognised.
        logger.info(
            "mail %r to %s <%s>",
            object.template,
            object.name,
            object.email,
            extra={"idempotency_key": session.call.key},
        )


class SendDigest(FutureCall):  # type: ignore[type-arg]  # takes no data
    async def invoke(self, session: Session, object: None) -> None:
        logger.info("daily digest sent")


futurecalls = FutureCalls()
futurecalls.register_future_call(SendMail(), "sendMail")
futurecalls.register_future_call(SendDigest(), "sendDigest")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Every worker runs this on every deploy; the identifier keeps a single chain.
    await futurecalls.session().future_call_recurring(
        "sendDigest", None, identifier="daily-digest", cron="0 8 * * *"
    )
    yield


app = FastAPI(title="Drip campaign", lifespan=lifespan)
futurecalls.include(app)

basic = HTTPBasic(realm="future calls")


def require_admin(credentials: HTTPBasicCredentials = Depends(basic)) -> None:
    """A demo operator login; a real app uses its own authentication here."""
    user = os.environ.get("DASHBOARD_USER", "admin").encode()
    password = os.environ.get("DASHBOARD_PASSWORD", "admin").encode()
    user_ok = secrets.compare_digest(credentials.username.encode(), user)
    password_ok = secrets.compare_digest(credentials.password.encode(), password)
    if not (user_ok and password_ok):
        raise HTTPException(401, "wrong user or password", {"WWW-Authenticate": "Basic"})


app.include_router(futurecalls.dashboard([Depends(require_admin)]), prefix="/futurecalls")
# Prometheus metrics at /metrics, behind the same demo login (scrapers can send it).
app.include_router(futurecalls.metrics_router(dependencies=[Depends(require_admin)]))


def user_calls(user_id: int) -> str:
    return f"user-{user_id}"


def idle_reminder(user_id: int) -> str:
    return f"idle-{user_id}"


@app.post("/signup")
async def signup(
    body: Signup, session: Session = Depends(futurecalls.session)
) -> dict[str, object]:
    scheduled = {}
    for template, delay in DRIP:
        mail = Mail(template=template, **body.model_dump())
        scheduled[template] = await session.future_call_with_delay(
            "sendMail", mail, delay, identifier=user_calls(body.user_id)
        )
    return {"user_id": body.user_id, "scheduled": scheduled}


@app.post("/activity")
async def activity(body: Signup, session: Session = Depends(futurecalls.session)) -> dict[str, int]:
    """The user did something: the "we miss you" mail moves to three days from now."""
    mail = Mail(template="we miss you", **body.model_dump())
    call_id = await session.future_call_with_delay(
        "sendMail", mail, IDLE_AFTER, identifier=idle_reminder(body.user_id), if_exists="replace"
    )
    return {"reminder": call_id}


@app.post("/password-reset")
async def password_reset(
    body: Signup, session: Session = Depends(futurecalls.session)
) -> dict[str, int]:
    """Sent at once, ahead of every drip mail that is due (priority 10 > 0)."""
    mail = Mail(template="password reset", **body.model_dump())
    call_id = await session.future_call_with_delay("sendMail", mail, timedelta(0), priority=10)
    return {"id": call_id}


@app.post("/admin/mail/{action}")
async def mail_switch(
    action: str, session: Session = Depends(futurecalls.session)
) -> dict[str, object]:
    """``pause`` while the mail provider is down (mails are still scheduled), then
    ``resume``. A real app puts this behind its admin authentication."""
    if action == "pause":
        await session.pause_future_calls("sendMail")
    elif action == "resume":
        await session.resume_future_calls("sendMail")
    else:
        raise HTTPException(404, f"no action {action!r}: pause or resume")
    return {"paused": await session.paused_future_calls()}


@app.post("/unsubscribe/{user_id}")
async def unsubscribe(
    user_id: int, session: Session = Depends(futurecalls.session)
) -> dict[str, int]:
    cancelled = await session.cancel_future_call(user_calls(user_id))
    cancelled += await session.cancel_future_call(idle_reminder(user_id))
    return {"cancelled": cancelled}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
