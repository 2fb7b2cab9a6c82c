"""The model registry's aggregates: `RegisteredModel` (versions with lineage, aliases, ONNX artifacts) and
`ModelExport` (one conversion of a version to ONNX, run on a runner as leased work: domain/work.py).

    RegisteredModel: created ──register_version──► version 1, 2, … (lineage frozen at registration)
                     set_alias / remove_alias move names (`production`, `staging`, any) between versions
                     attach_onnx(version, …) when an export of that version completed with parity
    ModelExport:     queued ──claim──► running ──complete──► completed (its artifact and parity report)
                                                ├─fail────► failed (parity above tolerance: the figures)
                                                └─…the rest of the leased-work lifecycle

A model and an export belong to one project (`project`; one stored before projects loads in the default one). The
model's id is derived from its name, unique in its project (`domain.contract.scoped`), so a second create of a name is a conflict in the event store
itself (no read model consulted). An export's completion and the model's `OnnxAttached` are saved in one
transaction by the command layer (commands/models.py). No I/O here.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.contract import DEFAULT_PROJECT, FieldError, has_control, scoped
from domain.identity import check_name
from domain.vocabulary import WorkKind
from domain.work import DEFAULT_MAX_ATTEMPTS, LeasedWork

_MODEL_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/models")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
EXPORT_FORMATS = ("onnx",)
DEFAULT_TOLERANCE = 1e-4
MAX_TAGS = 50
EXPORT_TIMEOUT_S = 900


class ModelError(Exception):
    """A command the model's state does not allow; maps to HTTP 409."""


class ModelSpecError(FieldError):
    """Invalid input; `field` names it (HTTP 422)."""


class VersionNotFoundError(LookupError):
    """No such version (or alias) of this model; HTTP 404."""


def model_id(name: str, project: str = DEFAULT_PROJECT) -> UUID:
    """The id of `project`'s model `name` (in the default project, the id it had before projects)."""
    return uuid5(_MODEL_NAMESPACE, scoped(project, name))


def check_model_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ModelSpecError(field, "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_alias(alias: Any, field: str = "alias") -> str:
    if not isinstance(alias, str) or not ALIAS_NAME.fullmatch(alias):
        raise ModelSpecError(field, "1 to 64 lowercase letters, digits, '_' or '-', starting with a letter")
    return alias


def check_tolerance(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < value <= 1:
        raise ModelSpecError("tolerance", "a finite number in (0, 1]")
    return float(value)


def check_description(description: Any) -> str:
    if not isinstance(description, str) or has_control(description) or len(description) > 5000:
        raise ModelSpecError("description", "at most 5000 characters, no control characters")
    return description


@dataclass(frozen=True, slots=True)
class Lineage:
    """What a version records of the job that made it, frozen at registration. Its JSON values (dataset, params,
    metrics, artifact, feature names, class labels) are never changed in place."""

    job_id: str
    framework: str
    task: str
    dataset: dict[str, Any]
    dataset_sha256: str | None
    params: dict[str, Any]
    final_metrics: dict[str, Any] | None
    artifact: dict[str, Any]  # uri, sha256, size_bytes, format
    feature_names: list[str] | None
    class_labels: list[Any] | None
    study_id: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lineage:
        return cls(**{name: copy.deepcopy(data[name]) for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self.__dataclass_fields__}


class RegisteredModel(Aggregate):
    @classmethod
    def create(cls, name: str, description: str = "", tags: list[str] | None = None, *,
               project: str) -> RegisteredModel:
        """A new model of `project` with the id derived from its name (unique in the project)."""
        check_model_name(name)
        check_name(project, "project")
        return cls(id=model_id(name, project), name=name, description=check_description(description),
                   tags=list(tags or []), project=project)

    class Created(Aggregate.Created):
        """v2 added the model's `project` (a model created before projects belongs to the default one)."""

        class_version = 2
        name: str
        description: str
        tags: list[str]
        project: str = DEFAULT_PROJECT

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

    @event(Created)
    def __init__(self, id: UUID, name: str, description: str, tags: list[str],
                 project: str = DEFAULT_PROJECT) -> None:
        # Only assigns: the rules ran in `create`, and a stored event must load under any later rule.
        self.project = project  # every read and command sees it only from within this project
        self.name, self.description, self.tags = name, description, list(tags)
        self.versions: dict[int, dict[str, Any]] = {}  # number → {job_id, lineage (a Lineage), onnx, parity, export_id}
        self.aliases: dict[str, int] = {}

    @property
    def latest_version(self) -> int:
        return max(self.versions, default=0)

    def number_of(self, ref: int | str) -> int:
        """The version number `ref` names: a number or an alias. VersionNotFoundError otherwise."""
        if isinstance(ref, str):
            if ref not in self.aliases:
                raise VersionNotFoundError(f"model {self.name!r} has no alias {ref!r}")
            return self.aliases[ref]
        if ref not in self.versions:
            raise VersionNotFoundError(f"model {self.name!r} has no version {ref}")
        return ref

    # ---- versions ------------------------------------------------------------------------------
    def register_version(self, job_id: UUID, lineage: Lineage) -> int:
        """Register a completed job's artifact as the next version; returns its number."""
        number = self.latest_version + 1
        self._version_registered(version=number, job_id=job_id, lineage=lineage.to_json())
        return number

    @event("VersionRegistered")
    def _version_registered(self, version: int, job_id: UUID, lineage: dict[str, Any]) -> None:
        self.versions[version] = {"job_id": job_id, "lineage": Lineage.from_json(lineage), "onnx": None,
                                  "parity": None, "export_id": None}

    def attach_onnx(self, version: int, export_id: UUID, onnx: dict[str, Any], parity: dict[str, Any]) -> None:
        """A completed export's ONNX artifact becomes the version's serving artifact (the latest export wins).
        The same export again is a no-op."""
        self.number_of(version)
        if self.versions[version]["export_id"] == export_id:
            return
        self._onnx_attached(version=version, export_id=export_id, onnx=onnx, parity=parity)

    @event("OnnxAttached")
    def _onnx_attached(self, version: int, export_id: UUID, onnx: dict[str, Any], parity: dict[str, Any]) -> None:
        self.versions[version].update(onnx=onnx, parity=parity, export_id=export_id)

    # ---- aliases -------------------------------------------------------------------------------
    def set_alias(self, alias: str, version: int) -> None:
        check_alias(alias)
        self.number_of(version)
        if self.aliases.get(alias) == version:
            return
        self._alias_set(alias=alias, version=version, previous=self.aliases.get(alias))

    @event("AliasSet")
    def _alias_set(self, alias: str, version: int, previous: int | None) -> None:
        self.aliases[alias] = version

    def remove_alias(self, alias: str) -> None:
        if alias not in self.aliases:
            raise VersionNotFoundError(f"model {self.name!r} has no alias {alias!r}")
        self._alias_removed(alias=alias, version=self.aliases[alias])

    @event("AliasRemoved")
    def _alias_removed(self, alias: str, version: int) -> None:
        del self.aliases[alias]

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


class ModelExport(LeasedWork):
    """One conversion of a model version to a serving format, with its parity check, run by a runner."""

    work_kind = WorkKind.EXPORT
    noun = "export"

    @classmethod
    def request(cls, id: UUID, model_name: str, model_version: int, format: str, tolerance: float,
                source: dict[str, Any], *, project: str) -> ModelExport:
        """A new export of `project`'s model `model_name` version `model_version` to `format`, within `tolerance` of
        the native model."""
        if format not in EXPORT_FORMATS:
            raise ModelSpecError("format", f"one of {', '.join(EXPORT_FORMATS)}")
        return cls(id=id, model_name=model_name, model_version=model_version, format=format,
                   tolerance=check_tolerance(tolerance), source=source, project=check_name(project, "project"))

    class Requested(Aggregate.Created):
        """v2 added the export's `project` (its model's; an export requested before projects is the default one's)."""

        class_version = 2
        model_name: str
        model_version: int
        format: str
        tolerance: float
        source: dict[str, Any]
        priority: str = "high"
        timeout_s: int = EXPORT_TIMEOUT_S
        max_attempts: int = DEFAULT_MAX_ATTEMPTS
        project: str = DEFAULT_PROJECT

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

    @event(Requested)
    def __init__(self, id: UUID, model_name: str, model_version: int, format: str, tolerance: float,
                 source: dict[str, Any], priority: str = "high", timeout_s: int = EXPORT_TIMEOUT_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, project: str = DEFAULT_PROJECT) -> None:
        # Only assigns: the rules ran in `request`, and a stored event must load under any later rule.
        self.project = project
        self.model_name, self.model_version, self.format = model_name, model_version, format
        self.tolerance = float(tolerance)
        self.source = source  # framework, task, dataset, artifact (uri, sha256): what the runner converts
        self.priority, self.timeout_s, self.max_attempts = priority, timeout_s, max_attempts
        self._init_work()

    def spec(self) -> dict[str, Any]:
        return {"model": self.model_name, "version": self.model_version, "format": self.format,
                "tolerance": self.tolerance, "timeout_s": self.timeout_s, **self.source}
