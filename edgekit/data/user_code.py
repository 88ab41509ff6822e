"""Import a ``package.module:name`` the user wrote (a data factory, a metric), as the model loader does.

Importable from the current directory under the CLI (cli/main.py puts it on ``sys.path``, as ``python -m``
does); in Python, from wherever the caller's ``sys.path`` reaches.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from edgekit.errors import EdgekitError, UsageError

SPEC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def import_object(spec: str, what: str, error: type[EdgekitError] = UsageError) -> Any:
    """The attribute ``name`` of ``package.module``; ``error`` (a data factory's: DataError) names ``what``."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise error(f"cannot load {what} '{spec}': {exc}",
                         hint="give package.module:name, importable from the current directory") from None
