"""The read models serve runs, as classes."""
from __future__ import annotations

import importlib


def _load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read_models() -> list[tuple[type, type, type]]:
    from entrypoints.serve import READ_MODELS
    return [(_load(app), _load(projection), _load(view)) for _, app, projection, view in READ_MODELS]
