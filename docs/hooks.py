"""MkDocs hook: the docstrings are reST for Sphinx-style readers (``:class:`~a.b.C```); mkdocstrings renders such a
role as its literal text (``:class:<code>~a.b.C</code>``). This drops the role and, as Sphinx's ``~`` asks, the
module path, leaving ``<code>C</code>``."""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _plain(match: re.Match[str]) -> str:
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(_plain, html)
