"""The :class:`FutureCall` base class and the registry of calls by name."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .errors import (
    InvalidPayloadError,
    InvalidScheduleError,
    NotRegisteredError,
    RegistrationError,
)

if TYPE_CHECKING:
    from .session import Session

ModelT = TypeVar("ModelT", bound=BaseModel)

DECODE_ERRORS = (ValidationError, ValueError)
MAX_NAME_LENGTH = 200
MAX_IDENTIFIER_LENGTH = 500
MAX_PRIORITY = 32767
MAX_FLEET_LIMIT = 10_000


class FutureCall(Generic[ModelT]):
    """Work to run later. Subclass as ``FutureCall[MyModel]`` and override :meth:`invoke`.

    The payload model is read from the type argument; a subclass without one takes no
    payload (``data`` must be ``None``). The delivery policy is set by class attributes:

    - ``max_attempts`` (default 1: at most once): with more, an exception, a timeout or an
      interrupted run schedules another attempt, ``retry_backoff`` later (doubling, with
      jitter); after the last, the call is parked as ``"failed"``.
    - ``timeout`` (default None): an ``invoke`` running longer is cancelled, and that
      counts as a failed attempt.

    And how it shares the fleet:

    - ``priority`` (default 0, the lowest; at most 32767): among due calls, higher
      priority starts first; within a priority, the oldest due first. A call can be given
      its own with ``priority=`` when it is scheduled.
    - ``fleet_limit`` (default None: no limit): at most this many calls of this name run
      at once across every worker on the database (``concurrency_limit`` is per
      process). With 1, calls of the name run one at a time, in due order.
    """

    model: ClassVar[type[BaseModel] | None] = None
    max_attempts: ClassVar[int] = 1
    retry_backoff: ClassVar[timedelta] = timedelta(seconds=1)
    timeout: ClassVar[timedelta | None] = None
    priority: ClassVar[int] = 0
    fleet_limit: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, FutureCall):
                (arg,) = get_args(base)
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    cls.model = arg
                elif not isinstance(arg, TypeVar):
                    raise TypeError(
                        f"{cls.__name__}: FutureCall[...] takes a pydantic model, not {arg!r}"
                    )

    async def invoke(self, session: Session, object: ModelT | None) -> None:
        """Run the call. ``object`` is the payload given when it was scheduled."""
        raise NotImplementedError(f"{type(self).__name__} must override invoke()")

    def encode(self, data: object) -> str | None:
        """The JSON stored for ``data``; raises :class:`InvalidPayloadError` for a wrong type
        or data that cannot be serialized (a lone surrogate in a str, a serializer that
        raises), :class:`InvalidScheduleError` for data that does not survive the trip."""
        if data is None:
            return None
        if self.model is None or not isinstance(data, self.model):
            expected = self.model.__name__ if self.model else "None (this call takes no data)"
            raise InvalidPayloadError(
                f"{type(self).__name__} takes {expected} as data, got {type(data).__name__}"
            )
        try:
            payload = data.model_dump_json()
        except Exception as exc:  # PydanticSerializationError, or a custom serializer's own
            raise InvalidPayloadError(
                f"{type(data).__name__} cannot be serialized to JSON for "
                f"{type(self).__name__}: {exc}"
            ) from exc
        try:
            equal = self.model.model_validate_json(payload) == data
        except DECODE_ERRORS:
            equal = False
        if not equal:  # e.g. NaN or infinite floats, lossy custom serializers
            raise InvalidScheduleError(
                f"{type(data).__name__} does not survive its JSON round trip unchanged, so "
                f"{type(self).__name__} could not receive it as given: {payload[:200]}"
            )
        return payload

    def decode(self, payload: str | None) -> ModelT | None:
        """The model for stored JSON; raises pydantic's ``ValidationError`` if it no longer fits."""
        if payload is None:
            return None
        if self.model is None:
            raise ValueError(f"{type(self).__name__} takes no data, but the call has a payload")
        return self.model.model_validate_json(payload)  # type: ignore[return-value]


def validate_name(name: object, what: str = "name") -> str:
    """Check a call name or identifier; returns it or raises a clear error."""
    limit = MAX_NAME_LENGTH if what == "name" else MAX_IDENTIFIER_LENGTH
    if not isinstance(name, str):
        raise InvalidScheduleError(f"{what} must be a str, got {type(name).__name__}")
    if not name or len(name) > limit:
        raise InvalidScheduleError(f"{what} must be 1 to {limit} characters, got {len(name)}")
    if "\x00" in name:
        raise InvalidScheduleError(f"{what} must not contain NUL characters")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidScheduleError(
            f"{what} must be valid UTF-8 text (no lone surrogates)"
        ) from None
    return name


class Registry:
    """Future calls by name; names are unique."""

    def __init__(self) -> None:
        self._calls: dict[str, FutureCall[Any]] = {}

    def register(self, call: FutureCall[Any], name: str) -> None:
        if not isinstance(call, FutureCall):
            raise RegistrationError(f"{call!r} is not a FutureCall instance")
        try:
            validate_name(name)
        except InvalidScheduleError as exc:
            raise RegistrationError(str(exc)) from None
        if name in self._calls:
            raise RegistrationError(f"a future call is already registered as {name!r}")
        _check_policy(call)
        self._calls[name] = call

    def get(self, name: str) -> FutureCall[Any]:
        try:
            return self._calls[name]
        except KeyError:
            raise NotRegisteredError(f"no future call is registered as {name!r}") from None

    def find(self, name: str) -> FutureCall[Any] | None:
        return self._calls.get(name)

    def names(self) -> list[str]:
        return sorted(self._calls)

    def fleet_limits(self) -> dict[str, int]:
        """The names with a ``fleet_limit``, and their limits."""
        return {
            name: call.fleet_limit
            for name, call in sorted(self._calls.items())
            if call.fleet_limit is not None
        }


def check_priority(priority: object, what: str = "priority") -> int:
    """A priority, or a clear error."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidScheduleError(f"{what} must be an int, got {type(priority).__name__}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidScheduleError(f"{what} must be from 0 to {MAX_PRIORITY}, got {priority}")
    return priority


def _check_policy(call: FutureCall[Any]) -> None:
    kind = type(call).__name__
    attempts, backoff, timeout = call.max_attempts, call.retry_backoff, call.timeout
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise RegistrationError(
            f"{kind}.max_attempts must be an int of at least 1, not {attempts!r}"
        )
    if not isinstance(backoff, timedelta) or backoff < timedelta(0):
        raise RegistrationError(f"{kind}.retry_backoff must be a timedelta >= 0, not {backoff!r}")
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise RegistrationError(
            f"{kind}.timeout must be None or a positive timedelta, not {timeout!r}"
        )
    try:
        check_priority(call.priority, f"{kind}.priority")
    except InvalidScheduleError as exc:
        raise RegistrationError(str(exc)) from None
    limit = call.fleet_limit
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_FLEET_LIMIT
    ):
        raise RegistrationError(
            f"{kind}.fleet_limit must be None or an int from 1 to {MAX_FLEET_LIMIT}, not {limit!r}"
        )
