"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

docs/performance.md shows the benchmark charts where ``make bench`` writes them,
``../bench/results/*.png``, so that the page reads right on GitHub too. Those files lie
outside ``docs_dir``: this hook adds them to the site under ``bench/results/`` and
rewrites the pages' links to them, so the build (``--strict``) resolves every one.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ["bench/results/*.png"]  # repository files the pages may link to
LINK = re.compile(r"(\]\()(\.\./[^)\s]+)(\))")
_added: set[str] = set()


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

    return LINK.sub(rewrite, markdown)
