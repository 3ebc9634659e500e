"""HTML pages from Jinja2 templates kept as package data (``<package>/templates/*.html.j2``).

Autoescaping is on, so every value a page shows (object names, labels, error messages from users'
uploads) is escaped unless a template marks it safe; data for a page's script goes through
``|tojson``, which escapes ``<``, ``>``, ``&`` and ``'`` for use inside ``<script>``. Undefined
names fail instead of rendering as empty text.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def _environment(package: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(package: str, template: str, **values: Any) -> str:
    """``<package>/templates/<template>`` rendered with ``values``."""
    return _environment(package).get_template(template).render(**values)
