"""The ids the CLI takes: a whole UUID, or the short id it shows (`0565b60a`): the first 8 to 32 hex digits of one,
hyphens ignored, found through the API's `id_prefix` filter on the list routes. A prefix that names no id, or more
than one, is the one-line error naming the argument's field (the ambiguous one lists the first few it names).
Exports are not here: no command takes an export id (they are named by model and version)."""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated

import typer

from api.client import TrainyardClient, TrainyardError

SHOWN = 5  # ids an ambiguous prefix lists
_PREFIX = re.compile(r"[0-9a-f]{8,32}")

SHORT = "its id, or the first 8 or more hex digits of it (the short id shown)"
JobIdArg = Annotated[str, typer.Argument(help=f"the job: {SHORT}")]
StudyIdArg = Annotated[str, typer.Argument(help=f"the study: {SHORT}")]
KeyIdArg = Annotated[str, typer.Argument(help=f"the API key: {SHORT}")]
Matches = Callable[[str], tuple[list[str], int]]  # a prefix -> (the first SHOWN ids it starts, how many it starts)


def job_id(client: TrainyardClient, text: str) -> str:
    def matches(prefix: str) -> tuple[list[str], int]:
        page = client.jobs(id_prefix=prefix, limit=SHOWN)
        return [j["job_id"] for j in page["items"]], page["total"]
    return resolve(text, "job", "job_id", matches)


def study_id(client: TrainyardClient, text: str) -> str:
    def matches(prefix: str) -> tuple[list[str], int]:
        page = client.studies(id_prefix=prefix, limit=SHOWN)
        return [s["study_id"] for s in page["items"]], page["total"]
    return resolve(text, "study", "study_id", matches)


def key_id(client: TrainyardClient, text: str) -> str:
    def matches(prefix: str) -> tuple[list[str], int]:
        keys = client.api_keys(id_prefix=prefix)["items"]
        return [k["id"] for k in keys], len(keys)
    return resolve(text, "API key", "key_id", matches)


def resolve(text: str, noun: str, field: str, matches: Matches) -> str:
    """The whole id of the `noun` ("job") that `text` names; a UUID is taken as it is, without asking the API."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    prefix = text.replace("-", "").lower()
    if not _PREFIX.fullmatch(prefix):
        raise TrainyardError(422, {"title": "Invalid request", "field": field, "detail":
                                   f"{text!r} is not {'an' if noun[0] in 'aeiouAEIOU' else 'a'} {noun} id "
                                   "(a UUID, or at least its first 8 hex digits)"})
    ids, total = matches(prefix)
    if total == 1:
        return ids[0]
    if total == 0:
        raise TrainyardError(404, {"title": "Not found", "field": field, "detail": f"no {noun} id starts with {text!r}"})
    listed = ", ".join(ids[:SHOWN]) + (f" and {total - SHOWN} more" if total > SHOWN else "")
    raise TrainyardError(422, {"title": "Ambiguous id", "field": field, "detail":
                               f"{text!r} starts {total} {noun} ids: {listed}; give more of its digits"})
