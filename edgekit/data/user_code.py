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


def import_roots(module_names) -> list[str]:
    """The ``sys.path`` entries from which the user's own modules among ``module_names`` were imported.

    A run that is continued later (``edgekit optimize --resume``) unpickles the user's model class and imports
    their metric and data factory again, maybe from another directory: recording these roots with the run lets
    it find them from any working directory.  Modules of installed packages and the standard library are left
    out (any python finds those).
    """
    import os
    import sys
    import sysconfig

    installed = {os.path.realpath(sysconfig.get_path(key)) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots = []
    for name in module_names:
        if str(name).split(".")[0] == "edgekit":
            continue  # wherever edgekit runs, it imports itself
        top = sys.modules.get(str(name).split(".")[0])
        path = getattr(top, "__file__", None)
        if not path:
            continue  # built-in, namespace package, or not imported
        root = os.path.dirname(os.path.dirname(path)) if hasattr(top, "__path__") else os.path.dirname(path)
        root = os.path.realpath(root)
        if root not in installed and not any(root.startswith(p + os.sep) for p in installed) and root not in roots:
            roots.append(root)
    return roots


def extend_import_path(roots) -> None:
    """Append the recorded ``import_roots`` that still exist to ``sys.path`` (appended: they never shadow)."""
    import os
    import sys

    for root in roots or ():
        if os.path.isdir(root) and root not in sys.path:
            sys.path.append(root)
