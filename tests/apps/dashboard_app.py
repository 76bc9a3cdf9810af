"""The app of the browser test: the dashboard mounted at /futurecalls behind a login
cookie (what an app's own authentication would be), over a real dispatcher. ``GET
/login`` sets the cookie. ``chargeCard`` always fails; the other calls log nothing."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, Session

OPERATOR = "operator-session"


class Data(BaseModel, extra="allow"):
    """Whatever the test's rows hold."""


class Quiet(FutureCall[Data]):
    async def invoke(self, session: Session, object: Any) -> None:
        pass


class ChargeCard(FutureCall[Data]):
    async def invoke(self, session: Session, object: Any) -> None:
        raise RuntimeError("CardDeclined: the card ending 4242 was declined")


def require_operator(request: Request) -> None:
    if request.cookies.get("session") != OPERATOR:
        raise HTTPException(401, "log in first")


futurecalls = FutureCalls()
for name in ("sendMail", "sendDigest", "syncCrm", "webhook"):
    futurecalls.register_future_call(Quiet(), name)
futurecalls.register_future_call(ChargeCard(), "chargeCard")

app = FastAPI(lifespan=futurecalls.lifespan)
app.include_router(
    futurecalls.dashboard(dependencies=[Depends(require_operator)]), prefix="/futurecalls"
)


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@app.get("/login")
async def login(response: Response) -> dict[str, bool]:
    response.set_cookie("session", OPERATOR, httponly=True, samesite="strict")
    return {"ok": True}
