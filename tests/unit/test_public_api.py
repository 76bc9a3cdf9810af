"""The public API changes only on purpose (habit borrowed from httpx)."""

from __future__ import annotations

import inspect

import fastapi_futurecalls
from fastapi_futurecalls import FutureCallError


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name in dir(fastapi_futurecalls)
        if not name.startswith("_") and not inspect.ismodule(getattr(fastapi_futurecalls, name))
    }
    assert set(fastapi_futurecalls.__all__) == public


def test_every_exported_error_derives_from_the_one_root() -> None:
    errors = [
        getattr(fastapi_futurecalls, name)
        for name in fastapi_futurecalls.__all__
        if name.endswith("Error")
    ]
    assert len(errors) == 9
    assert all(issubclass(error, FutureCallError) for error in errors)


def test_the_package_is_typed() -> None:
    from importlib.resources import files

    assert files("fastapi_futurecalls").joinpath("py.typed").is_file()
