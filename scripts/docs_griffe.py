"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings' ``extensions``).

The package's docstrings cross-reference in Sphinx's style (``:class:`Session```,
``:meth:`FutureCalls.run_due```). This turns each role into a link of the site when it
names a public object (``fastapi_futurecalls.__all__``, their members, the testing
module), which mkdocs then checks (a stale name fails ``--strict``), and into plain code
otherwise.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`~?([\w.]+)`")
PUBLIC = ["fastapi_futurecalls", "fastapi_futurecalls.testing"]


def _public(path: str) -> bool:
    """Whether ``path`` (``fastapi_futurecalls[.testing].Name[.member]``) exists and is
    documented on the site: the name is exported and the member is not private."""
    for module_name in sorted(PUBLIC, key=len, reverse=True):
        if not path.startswith(module_name + "."):
            continue
        module = importlib.import_module(module_name)
        head, *rest = path.removeprefix(module_name + ".").split(".")
        if head not in getattr(module, "__all__", ()) or len(rest) > 1:
            return False
        found: Any = getattr(module, head, None)
        return found is not None and (not rest or hasattr(found, rest[0]))
    return False


def _target(name: str, owner: griffe.Object) -> str | None:
    """The public path a role's ``name`` means, seen from the object it documents."""
    candidates = [name, f"fastapi_futurecalls.{name}"]
    parts = owner.path.split(".")  # a method of the same class, a name of the same module
    candidates += [".".join([*parts[:-i], name]) for i in range(1, len(parts))]
    public = [PUBLIC[0] + "." + owner.name] if owner.is_class else []
    if owner.parent is not None and owner.parent.is_class:
        public.append(PUBLIC[0] + "." + owner.parent.name)
    candidates += [f"{cls}.{name}" for cls in public]
    return next((c for c in candidates if _public(c)), None)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: self._link(m[1], obj), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)  # type: ignore[arg-type]

    @staticmethod
    def _link(name: str, obj: griffe.Object) -> str:
        target = _target(name, obj)
        shown = name.rsplit(".", 1)[-1] if "." in name and name.startswith("fastapi") else name
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"
