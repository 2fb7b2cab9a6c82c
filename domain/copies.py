"""Cheap copies of aggregates whose mutators replace what they set.

The repository's cache copies an aggregate for every command, and the study driver copies a study at each decision.
An aggregate whose events replace the attributes they set (never change a dict or list in place) can share those
values with its copy; only the containers a mutator changes by replacing their items (a study's `trials`) and the
pending events need copies of their own. The property tests of each aggregate check that no command reaches a copy
taken before it.
"""
from __future__ import annotations

import copy
from typing import Any


def copy_sharing_values(aggregate: Any, memo: dict[int, Any], own: tuple[str, ...] = ()) -> Any:
    """For `__deepcopy__`: a copy of `aggregate` sharing its attributes' values, with shallow copies of `own`."""
    new = object.__new__(type(aggregate))
    memo[id(aggregate)] = new
    new.__dict__.update(aggregate.__dict__)
    for name in own:
        new.__dict__[name] = copy.copy(aggregate.__dict__[name])
    new.__dict__["_pending_events"] = copy.deepcopy(aggregate.__dict__.get("_pending_events", []), memo)
    return new
