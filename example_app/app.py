"""A small drip campaign on fastapi_futurecalls.

Signing up schedules a welcome mail a couple of seconds later and two follow-ups, all
under the identifier ``user-<id>``; unsubscribing cancels whatever has not been sent.
The "mail" is a log line. Run it with ``make run`` (two uvicorn workers).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import Depends, FastAPI
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
    async def invoke(self, session: Session, object: Mail | None) -> None:
        assert object is not None
        logger.info("mail %r to %s <%s>", object.template, object.name, object.email)


futurecalls = FutureCalls()
futurecalls.register_future_call(SendMail(), "sendMail")
app = FastAPI(title="Drip campaign", lifespan=futurecalls.lifespan)


def identifier(user_id: int) -> str:
    return f"user-{user_id}"


@app.post("/signup")
async def signup(
    body: Signup, session: Session = Depends(futurecalls.session)
) -> dict[str, object]:
    scheduled = {}
    for template, delay in DRIP:
        mail = Mail(template=template, **body.model_dump())
        scheduled[template] = await session.future_call_with_delay(
            "sendMail", mail, delay, identifier=identifier(body.user_id)
        )
    return {"user_id": body.user_id, "scheduled": scheduled}


@app.post("/unsubscribe/{user_id}")
async def unsubscribe(
    user_id: int, session: Session = Depends(futurecalls.session)
) -> dict[str, int]:
    return {"cancelled": await session.cancel_future_call(identifier(user_id))}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
