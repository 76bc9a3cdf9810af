"""FutureCall's model detection, payload checks and the registry, without a database."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from fastapi_futurecalls import (
    FutureCall,
    InvalidPayloadError,
    NotRegisteredError,
    RegistrationError,
    Session,
)
from fastapi_futurecalls.calls import Registry
from tests.support import Item


class Other(BaseModel):
    n: int


class ItemCall(FutureCall[Item]):
    async def invoke(self, session: Session, object: Item | None) -> None:
        pass


class NoData(FutureCall):  # type: ignore[type-arg]
    async def invoke(self, session: Session, object: None) -> None:
        pass


def test_the_model_comes_from_the_type_argument() -> None:
    assert ItemCall.model is Item
    assert NoData.model is None

    class Sub(ItemCall):
        pass

    assert Sub.model is Item


def test_a_non_model_type_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="pydantic model"):

        class Bad(FutureCall[int]):  # type: ignore[type-var]
            pass


def test_encode_accepts_the_model_or_none_and_nothing_else() -> None:
    call = ItemCall()
    assert call.encode(None) is None
    assert call.decode(call.encode(Item(n=3, label="é"))) == Item(n=3, label="é")
    for wrong in (Other(n=3), {"n": 3}, 3):
        with pytest.raises(InvalidPayloadError, match="ItemCall takes Item"):
            call.encode(wrong)
    with pytest.raises(TypeError, match="takes no data"):
        NoData().encode(Item(n=1))


def test_registering_a_name_twice_raises() -> None:
    registry = Registry()
    registry.register(ItemCall(), "item")
    with pytest.raises(RegistrationError, match="'item'"):
        registry.register(NoData(), "item")


@pytest.mark.parametrize("name", ["", "x" * 201, 42])
def test_invalid_names_are_refused_at_registration(name: object) -> None:
    with pytest.raises(RegistrationError, match="name"):
        Registry().register(ItemCall(), name)  # type: ignore[arg-type]


def test_looking_up_an_unknown_name_names_it() -> None:
    with pytest.raises(NotRegisteredError, match="'ghost'"):
        Registry().get("ghost")


def test_invoke_must_be_overridden() -> None:
    class Lazy(FutureCall[Item]):
        pass

    with pytest.raises(NotImplementedError, match="Lazy"):
        import asyncio

        asyncio.run(Lazy().invoke(None, None))  # type: ignore[arg-type]
