"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

- docs/performance.md shows the benchmark charts where ``make bench`` writes them,
  ``../bench/results/*.png``, so that the page reads right on GitHub too. Those files lie
  outside ``docs_dir``: the hooks add them to the site under ``bench/results/`` and
  rewrite the pages' links to them, so the build (``--strict``) resolves every one.
- ``<!-- cli-help: COMMAND -->`` in a page becomes that command's ``--help`` (the bare
  ``<!-- cli-help -->``: the program's), read from the code at build time.
- Checks that keep the site complete, each a warning (so an error under ``--strict``):
  every public name (``__all__`` of the package and of its testing module) and every
  fixture of the pytest plugin has a ``::: name`` entry in the reference; every command
  of the CLI has its help on the CLI page; every setting has a row on the configuration
  page; no page loads anything from the network (a script, style, font or image from
  an outside address), so the built site works offline.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ["bench/results/*.png"]  # repository files the pages may link to
LINK = re.compile(r"(\]\()(\.\./[^)\s]+)(\))")
CLI_HELP = re.compile(r"<!-- cli-help(?::\s*([\w-]+))?\s*-->")
ENTRY = re.compile(r"^::: ([\w.]+)", re.MULTILINE)
CLI_PAGE, CONFIG_PAGE = "reference/cli.md", "reference/configuration.md"
# What a page would fetch when it loads (not the links a reader may follow).
REMOTE = re.compile(r"""(?:\bsrc=|\bsrcset=|<link\b[^>]*\bhref=|url\()["']?(https?:)?//""", re.I)
log = logging.getLogger("mkdocs.hooks.futurecalls")
_added: set[str] = set()
_entries: set[str] = set()
_helped: set[str] = set()


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for pattern in OUTSIDE:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
            _added.add(rel)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    docs = Path(config["docs_dir"]).resolve().relative_to(ROOT).as_posix()
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(docs, here, match[2]))
        if target not in _added:
            return match[0]  # left to mkdocs, which warns about it
        return match[1] + posixpath.relpath(target, here or ".") + match[3]

    markdown = LINK.sub(rewrite, markdown)
    _entries.update(ENTRY.findall(markdown))
    if CLI_HELP.search(markdown):
        markdown = CLI_HELP.sub(lambda m: _cli_help(m[1]), markdown)
    if page.file.src_uri == CONFIG_PAGE:
        _check_settings(markdown)
    return markdown


def on_env(env: Any, config: Any, files: Files, **kwargs: Any) -> Any:
    """Runs once every page's markdown was read: what the reference must cover."""
    public = []
    for module_name in ("fastapi_futurecalls", "fastapi_futurecalls.testing"):
        module = importlib.import_module(module_name)
        public += [f"{module_name}.{name}" for name in module.__all__]
    public += [f"fastapi_futurecalls.pytest_plugin.{name}" for name in _fixtures()]
    for path in public:
        if path not in _entries:
            log.warning("the reference has no '::: %s' entry (a public name)", path)
    for name in sorted(set(_commands()) - _helped):
        log.warning("%s has no '<!-- cli-help: %s -->' (a command of the CLI)", CLI_PAGE, name)
    return env


def on_post_build(config: Any, **kwargs: Any) -> None:
    site = Path(config["site_dir"])
    for path in sorted([*site.rglob("*.html"), *site.rglob("*.css")]):
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in REMOTE.finditer(text):
            snippet = text[match.start() : match.end() + 60].split(">")[0]
            log.warning("%s loads from the network: %s", path.relative_to(site), snippet)


def _commands() -> dict[str, Any]:
    import typer

    from fastapi_futurecalls.cli import app

    root = typer.main.get_command(app)
    return dict(getattr(root, "commands", {}))


def _cli_help(name: str | None) -> str:
    """The plain (not rich) ``--help`` of the program or of one command, as a code block."""
    import click
    import typer

    from fastapi_futurecalls.cli import app

    root = typer.main.get_command(app)
    width = {"max_content_width": 88, "terminal_width": 88}
    context = click.Context(root, info_name="fastapi-futurecalls", **width)
    command: Any = root
    if name is not None:
        command = _commands().get(name)
        if command is None:
            log.warning(
                "%s: <!-- cli-help: %s -->, but the CLI has no such command", CLI_PAGE, name
            )
            return f"`{name}`: no such command"
        _helped.add(name)
        context = click.Context(command, info_name=name, parent=context, **width)
    command.rich_markup_mode = None  # click's plain layout, not rich's boxes
    return (
        "```text\n$ fastapi-futurecalls "
        + (f"{name} " if name else "")
        + "--help\n"
        + (command.get_help(context) + "\n```")
    )


def _fixtures() -> list[str]:
    module = importlib.import_module("fastapi_futurecalls.pytest_plugin")
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and hasattr(value, "_fixture_function_marker")
    ]


def _check_settings(markdown: str) -> None:
    from fastapi_futurecalls import Settings

    for field in dataclasses.fields(Settings):
        if (
            f"`{field.name}`" not in markdown
            and f"FUTURECALLS_{field.name.upper()}" not in markdown
        ):
            log.warning("%s does not describe the setting %r", CONFIG_PAGE, field.name)
