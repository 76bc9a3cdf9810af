"""Whatever a payload does wrong, encode raises a FutureCallError, never pydantic's own."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, field_serializer

from fastapi_futurecalls import FutureCall, FutureCallError, InvalidPayloadError
from fastapi_futurecalls.calls import validate_name
from fastapi_futurecalls.errors import InvalidScheduleError


class Text(BaseModel):
    s: str = ""


class Failing(BaseModel):
    n: int = 1

    @field_serializer("n")
    def serialize_n(self, value: int) -> int:
        raise RuntimeError("the serializer broke")


class Opaque(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: object = None


class TakesText(FutureCall[Text]):
    pass


class TakesFailing(FutureCall[Failing]):
    pass


class TakesOpaque(FutureCall[Opaque]):
    pass


@pytest.mark.parametrize(
    ("call", "data"),
    [
        (TakesText(), Text(s="\ud800")),  # a lone surrogate: not encodable as UTF-8
        (TakesText(), Text(s="ok \udfff then")),
        (TakesFailing(), Failing()),  # a custom serializer that raises
        (TakesOpaque(), Opaque(thing=object())),  # a value pydantic cannot serialize
    ],
)
def test_unserializable_payloads_are_invalid_payload_errors(call: FutureCall, data: BaseModel):
    with pytest.raises(InvalidPayloadError, match="JSON") as raised:
        call.encode(data)
    assert isinstance(raised.value, FutureCallError)


@pytest.mark.parametrize("what", ["name", "identifier"])
def test_names_with_lone_surrogates_are_refused(what: str):
    with pytest.raises(InvalidScheduleError, match="UTF-8"):
        validate_name("user-\ud800", what)
