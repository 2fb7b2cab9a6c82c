"""What the inference server knows and does per request, in memory: loaded deployments (one onnxruntime session per
model version, a Router per revision), API keys (hashes only) with their rate limits, and the prediction records
waiting to be published. No database, event store or network access on the request path.

State comes from the read models only (serving/feed.py): anyone on the bus can publish an event, so an event is a
hint to look at the read model again, never a state to apply. `apply_deployment` loads what a new revision needs
*before* swapping it in, so requests never see a half-loaded deployment and a request in flight keeps the revision
it started with.
A revision whose artifacts cannot be loaded (missing file, sha256 mismatch, not inside the artifact root) is not
applied: the deployment keeps serving its previous revision and `/readyz` shows the error.

Projects: a deployment is served under its key `scoped(project, name)` (domain/contract.py: the name alone in the
default project), the key its prediction records carry to ClickHouse; an API key belongs to one project and another
project's deployments do not exist for it (404, exactly as a missing one).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domain.api_key import allows
from domain.contract import DEFAULT_PROJECT, PredictionBatch, scoped
from domain.features import FeatureRecipe, RowError
from domain.images import ImageInput
from domain.routing import Router
from serving.images import ImageRowError, image_rows

log = logging.getLogger("trainyard.inference")
MAX_INSTANCES = 1000  # rows per request
MAX_BUFFERED_RECORDS = 200_000  # prediction records waiting for NATS; beyond it new ones are dropped (and counted)


class PredictError(Exception):
    """A request the server refuses: HTTP `status`, problem `detail`, `field` at fault, extra headers."""

    def __init__(self, status: int, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers or {}


@dataclass(frozen=True)
class LoadedModel:
    """One model version's ONNX session and what turning rows into answers needs."""

    model: str
    version: int
    sha256: str
    session: Any
    input_name: str
    output_name: str
    n_features: int
    feature_index: dict[str, int]
    class_labels: tuple[str, ...] | None
    task: str
    # How raw columns become the features (None: a model registered before recipes were kept, or one whose raw
    # columns are its features): named rows may then be raw rows as the training file had them.
    recipe: FeatureRecipe | None = None

    def run(self, X: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: X})[0]


@dataclass(frozen=True)
class LiveDeployment:
    name: str
    revision: int
    version: int  # the aggregate version it was built from (older events are ignored)
    router: Router
    variants: dict[str, LoadedModel]
    shadow: LoadedModel | None
    project: str = DEFAULT_PROJECT

    @property
    def key(self) -> str:
        """Its key in the served state and in the prediction records: `scoped(project, name)`."""
        return scoped(self.project, self.name)


def project_of(key: str) -> tuple[str, str]:
    """(project, name) of a deployment's scoped key (names and projects hold no "/")."""
    project, _, name = key.rpartition("/")
    return project or DEFAULT_PROJECT, name


@dataclass
class KeyState:
    key_id: str
    name: str
    deployments: list[str]
    rate: float | None
    version: int
    project: str = DEFAULT_PROJECT  # the only project whose deployments it reaches
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> float:
        """0 if the request may go now, else the seconds until it may (token bucket of `rate` per second with a
        burst of max(1, rate))."""
        if self.rate is None:
            return 0.0
        burst = max(1.0, self.rate)
        self.tokens = min(burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class ArtifactMismatch(ValueError):
    """The artifact read is not the one the registry names."""


class ModelLoader:
    """Sessions by artifact sha256, shared by every deployment and revision that serves the same file."""

    def __init__(self, read_artifact: Any) -> None:
        self.read_artifact = read_artifact
        self.cache: dict[str, Any] = {}

    def load(self, model: str, version: int, artifact: dict[str, Any]) -> LoadedModel:
        from infra.onnx_runtime import session_for

        sha = str(artifact["sha256"])
        session = self.cache.get(sha)
        if session is None:
            data = self.read_artifact(str(artifact["uri"]))
            if hashlib.sha256(data).hexdigest() != sha:
                raise ArtifactMismatch(f"{model} v{version}: the ONNX file does not match its sha256")
            session = self.cache[sha] = session_for(data)
        names = [str(n) for n in (artifact.get("feature_names") or [])]
        labels = artifact.get("class_labels")
        recipe = FeatureRecipe.from_json(artifact["feature_recipe"]) if artifact.get("feature_recipe") else None
        if recipe is not None and recipe.image is None and (recipe.is_identity or recipe.feature_names != names):
            recipe = None  # nothing to translate, or not this model's inputs: encoded rows only
        return LoadedModel(model=model, version=int(version), sha256=sha, session=session,
                           input_name=str(artifact.get("input_name") or "input"),
                           output_name=str(artifact.get("output_name") or "probabilities"),
                           n_features=int(artifact["n_features"]), feature_index={n: i for i, n in enumerate(names)},
                           class_labels=tuple(str(x) for x in labels) if labels else None,
                           task=str(artifact.get("task") or ""), recipe=recipe)

    def retain(self, live: list[LiveDeployment]) -> None:
        """Forget sessions no live deployment uses."""
        used = {m.sha256 for d in live for m in [*d.variants.values(), *([d.shadow] if d.shadow else [])]}
        for sha in list(self.cache):
            if sha not in used:
                del self.cache[sha]


class Telemetry:
    """Prediction records as columns, bounded; `take` hands a batch to the publisher."""

    COLUMNS = ("ts_ms", "request_id", "deployment", "revision", "variant", "model", "version", "status", "latency_us",
               "n_rows", "shadow", "prediction", "value", "probabilities", "classes")

    def __init__(self, server_id: str, limit: int = MAX_BUFFERED_RECORDS) -> None:
        self.server_id, self.limit = server_id, limit
        self.cols: dict[str, list] = {c: [] for c in self.COLUMNS}
        self.dropped = 0
        self.published = 0
        self.pending: deque[PredictionBatch] = deque()  # taken but not yet acknowledged by JetStream
        self._seq = 0

    def __len__(self) -> int:
        return len(self.cols["ts_ms"]) + sum(b.size for b in self.pending)

    def record(self, request_id: str, deployment: str, revision: int, variant: str, model: str, version: int,
               status: int, latency_us: int, n_rows: int, shadow: bool = False,
               first: tuple[str, float | None, list[float], list[str]] = ("", None, [], [])) -> None:
        """One request; `first`: what its first row was answered (prediction, value, probabilities, classes)."""
        if len(self) >= self.limit:
            self.dropped += 1
            return
        c = self.cols
        c["ts_ms"].append(int(time.time() * 1000))
        c["request_id"].append(request_id)
        c["deployment"].append(deployment)
        c["revision"].append(revision)
        c["variant"].append(variant)
        c["model"].append(model)
        c["version"].append(version)
        c["status"].append(status)
        c["latency_us"].append(min(latency_us, 2**32 - 1))
        c["n_rows"].append(n_rows)
        c["shadow"].append(shadow)
        c["prediction"].append(first[0])
        c["value"].append(first[1])
        c["probabilities"].append(first[2])
        c["classes"].append(first[3])

    def split_oldest(self) -> None:
        """The oldest pending batch in two halves (it was over NATS' max payload); each keeps a derived id."""
        batch = self.pending.popleft()
        half = batch.size // 2
        parts = [{c: getattr(batch, c)[a:b] for c in self.COLUMNS} for a, b in ((0, half), (half, batch.size))]
        for suffix, data in reversed(list(zip("ab", parts))):
            self.pending.appendleft(PredictionBatch.model_construct(
                batch_id=f"{batch.batch_id}{suffix}", server_id=self.server_id, **data))

    def take(self, max_records: int = 2_000) -> PredictionBatch | None:
        """The oldest unpublished batch (a batch that failed to publish comes back first, with the same id)."""
        if self.pending:
            return self.pending[0]
        n = min(len(self.cols["ts_ms"]), max_records)
        if not n:
            return None
        self._seq += 1
        data = {c: v[:n] for c, v in self.cols.items()}
        for v in self.cols.values():
            del v[:n]
        batch = PredictionBatch.model_construct(batch_id=f"{self.server_id}:{time.time_ns()}:{self._seq}",
                                                server_id=self.server_id, **data)
        self.pending.append(batch)
        return batch

    def published_one(self) -> None:
        batch = self.pending.popleft()
        self.published += batch.size


class ServingState:
    """Deployments and keys as the server sees them now; swapped whole, read without locks."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader
        self.deployments: dict[str, LiveDeployment] = {}  # by scoped key (LiveDeployment.key)
        self.keys: dict[str, KeyState] = {}  # by key hash
        self.key_versions: dict[str, int] = {}  # key id → last applied aggregate version (revoked ones too)
        self.deployment_versions: dict[str, int] = {}  # scoped key → last applied aggregate version
        self.errors: dict[str, str] = {}  # scoped key → why its latest revision is not served

    # ---- deployment and key changes (events or a reload) --------------------------------------------------
    def apply_deployment(self, snapshot: dict[str, Any], version: int, replace: bool = False) -> bool:
        """Serve `snapshot` ({name, project?, revision, active, variants, shadow}; no project: the default one)
        unless a newer one is served (`replace`: unless this very version is served: the read model is the truth,
        even when it went back). Returns whether it changed anything; raises nothing (a load failure is kept in
        `errors`)."""
        project = str(snapshot.get("project") or DEFAULT_PROJECT)
        plain = str(snapshot["name"])
        name = scoped(project, plain)  # the served state's key from here on
        served = self.deployment_versions.get(name, 0)
        if version == served or (version < served and not replace):
            return False
        if not snapshot.get("active", True):
            self.deployments.pop(name, None)
            self.deployment_versions[name] = version
            self.errors.pop(name, None)
            self.loader.retain(list(self.deployments.values()))
            return True
        try:
            variants = {str(v["name"]): self.loader.load(v["model"], v["version"], v["artifact"])
                        for v in snapshot["variants"]}
            shadow = snapshot.get("shadow")
            shadow_model = self.loader.load(shadow["model"], shadow["version"], shadow["artifact"]) if shadow else None
            router = Router(name, int(snapshot["revision"]), [(str(v["name"]), int(v["weight"]))
                                                              for v in snapshot["variants"]])
        except Exception as e:
            # What /readyz shows: no message text, which may name server paths; the log has the whole error.
            reason = str(e) if isinstance(e, ArtifactMismatch) else type(e).__name__
            self.errors[name] = f"revision {snapshot.get('revision')} not loaded: {reason}"[:500]
            log.error("deployment %s: revision %s not loaded: %s: %s", name, snapshot.get("revision"),
                      type(e).__name__, e)
            return False
        self.deployments[name] = LiveDeployment(plain, int(snapshot["revision"]), version, router, variants,
                                                shadow_model, project)
        self.deployment_versions[name] = version
        self.errors.pop(name, None)
        self.loader.retain(list(self.deployments.values()))
        log.info("deployment %s: serving revision %s", name, snapshot["revision"])
        return True

    def remove_deployments(self, keep: set[str]) -> None:
        """Stop serving every deployment whose scoped key is not in `keep` (the read model does not list it as
        active)."""
        for name in [n for n in self.deployments if n not in keep]:
            self.deployments.pop(name, None)
            self.deployment_versions.pop(name, None)
        for name in [n for n in self.errors if n not in keep]:
            self.errors.pop(name, None)
        self.loader.retain(list(self.deployments.values()))

    def sync_keys(self, live: list[dict[str, Any]]) -> None:
        """Exactly the keys of `live` (rows {id, project, name, key_hash, deployments, rate_limit_per_s, version}): a key
        whose row is unchanged keeps its rate-limit bucket; any other key is dropped or replaced."""
        wanted = {str(r["id"]): r for r in live}
        for h, state in list(self.keys.items()):
            row = wanted.get(state.key_id)
            if (row is None or int(row["version"]) != state.version or str(row["key_hash"]) != h
                    or str(row.get("project") or DEFAULT_PROJECT) != state.project):
                del self.keys[h]
        have = {s.key_id for s in self.keys.values()}
        self.key_versions = {s.key_id: s.version for s in self.keys.values()}
        for key_id, row in wanted.items():
            if key_id not in have:
                self.apply_key(key_id, int(row["version"]), row)

    def apply_key(self, key_id: str, version: int, key: dict[str, Any] | None) -> None:
        """`key` ({name, project?, key_hash, deployments, rate_limit_per_s}) or None when revoked."""
        if version <= self.key_versions.get(key_id, 0):
            return
        self.key_versions[key_id] = version
        for h, state in list(self.keys.items()):
            if state.key_id == key_id:
                del self.keys[h]
        if key is not None:
            rate = key.get("rate_limit_per_s")
            self.keys[str(key["key_hash"])] = KeyState(key_id, str(key["name"]), list(key["deployments"]),
                                                       float(rate) if rate else None, version,
                                                       str(key.get("project") or DEFAULT_PROJECT),
                                                       tokens=max(1.0, float(rate or 1)))

    # ---- the request path --------------------------------------------------------------------------------
    def key_of(self, api_key: str | None) -> KeyState | None:
        """The live key `api_key` is, if any (no rate limit taken: for reads that are not predictions)."""
        if not api_key:
            return None
        return self.keys.get(hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest())

    def authorize(self, api_key: str | None, deployment: str, project: str = DEFAULT_PROJECT) -> KeyState:
        """The key that may call `project`'s `deployment` now, else PredictError: 401 without a live key, 404 for a
        deployment of another project than the key's (as for a missing one: no existence leak), 403 for one of its
        project that it is not scoped to, 429 over its rate."""
        if not api_key:
            raise PredictError(401, "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                               "Authorization", {"WWW-Authenticate": "Bearer"})
        state = self.keys.get(hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest())
        if state is None:
            raise PredictError(401, "unknown or revoked API key", "Authorization", {"WWW-Authenticate": "Bearer"})
        if state.project != project:
            raise PredictError(404, f"no active deployment {deployment!r}", "name")
        if not allows(state.deployments, deployment):
            raise PredictError(403, f"this API key may not call deployment {deployment!r}", "Authorization")
        wait = state.take(time.monotonic())
        if wait > 0:
            raise PredictError(429, f"rate limit of {state.rate:g} requests/s exceeded", None,
                               {"Retry-After": str(max(1, math.ceil(wait)))})
        return state

    def deployment(self, project: str, name: str) -> LiveDeployment | None:
        return self.deployments.get(scoped(project, name))

    def reach(self, key: KeyState) -> list[LiveDeployment]:
        """The deployments served now that `key` may call (its project's, within its scope), by name."""
        return sorted((d for d in self.deployments.values() if d.project == key.project
                       and allows(key.deployments, d.name)), key=lambda d: d.name)

    def errors_in_reach(self, key: KeyState) -> dict[str, str]:
        """Load errors of the deployments `key` may call, by name."""
        out = {}
        for scoped_key, error in self.errors.items():
            project, name = project_of(scoped_key)
            if project == key.project and allows(key.deployments, name):
                out[name] = error
        return out


def rows_of(instances: Any, model: LoadedModel) -> np.ndarray:
    """The request's instances as a float32 matrix for `model`: rows of numbers (null = missing) in the model's
    feature order, objects naming every feature (any order), or, for a model with a feature recipe, objects
    naming the training file's raw columns (any order; domain/features.py encodes them: an unseen or null category
    is all zeros, a null number is missing); for an image model, objects with an `image` or `pixels`
    (serving/images.py). PredictError(422) naming the field otherwise."""
    if not isinstance(instances, list) or not instances:
        raise PredictError(422, "instances: a non-empty list of rows", "instances")
    if len(instances) > MAX_INSTANCES:
        raise PredictError(422, f"instances: at most {MAX_INSTANCES} rows per request", "instances")
    if model.recipe is not None and model.recipe.image is not None and isinstance(instances[0], dict):
        return _image_rows(instances, model.recipe.image)
    n = model.n_features
    X = np.empty((len(instances), n), dtype=np.float32)
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            if model.recipe is not None and not _encoded(row, model):
                try:
                    row = model.recipe.encode(row)
                except RowError as e:
                    where = f"instances.{i}.{e.field}" if e.field else f"instances.{i}"
                    raise PredictError(422, f"{where}: {e.reason}", where) from None
            else:
                if len(row) != n or not model.feature_index:
                    _named_row_error(row, model, i)
                values: list[Any] = [None] * n
                for name, v in row.items():
                    j = model.feature_index.get(name)
                    if j is None:
                        _named_row_error(row, model, i)
                    values[j] = v
                row = values
        elif not isinstance(row, list) or len(row) != n:
            raise PredictError(422, f"instances.{i}: a list of {n} numbers or an object of {n} named features",
                               f"instances.{i}")
        for j, v in enumerate(row):
            t = type(v)
            if t is float or t is int:
                if t is int and not -2**63 <= v < 2**63:
                    raise PredictError(422, f"instances.{i}.{j}: out of range", f"instances.{i}.{j}")
                X[i, j] = v
            elif v is None:
                X[i, j] = np.nan
            else:
                raise PredictError(422, f"instances.{i}.{j}: a number or null", f"instances.{i}.{j}")
    if not np.isfinite(X[~np.isnan(X)]).all():
        raise PredictError(422, "instances: values must be finite (null for a missing value)", "instances")
    return X


def _image_rows(instances: list, image: ImageInput) -> np.ndarray:
    """An image model's instances as objects: images or pixels (serving/images.py)."""
    try:
        return image_rows(instances, image)
    except ImageRowError as e:
        raise PredictError(422, f"{e.field}: {e.reason}", e.field) from None


def _encoded(row: dict, model: LoadedModel) -> bool:
    """`row` names the model's encoded features (`contract=month`, …): the form every model takes."""
    return len(row) == model.n_features and all(k in model.feature_index for k in row)


def _named_row_error(row: dict, model: LoadedModel, i: int) -> None:
    if not model.feature_index:
        raise PredictError(422, f"instances.{i}: this model has no feature names; send rows as lists",
                           f"instances.{i}")
    missing = [f for f in model.feature_index if f not in row]
    unknown = [str(k)[:64] for k in row if k not in model.feature_index]
    if missing:
        raise PredictError(422, f"instances.{i}: missing features {missing[:10]}", f"instances.{i}.{missing[0]}")
    raise PredictError(422, f"instances.{i}: unknown features {unknown[:10]}", f"instances.{i}")


def first_row(result: dict[str, Any]) -> tuple[str, float | None, list[float], list[str]]:
    """What the first row was answered, for the prediction record (feedback refers to it)."""
    if "probabilities" in result:
        return (str(result["predictions"][0]), None, [min(1.0, max(0.0, p)) for p in result["probabilities"][0]],
                result["classes"])
    value = result["predictions"][0]
    return "", value if isinstance(value, float) and math.isfinite(value) else None, [], []


def answer(model: LoadedModel, out: np.ndarray) -> dict[str, Any]:
    """`predictions` (class labels or values) and, for classification, `probabilities` per row with `classes`."""
    if model.output_name == "probabilities":
        labels = model.class_labels or tuple(str(k) for k in range(out.shape[1]))
        best = out.argmax(axis=1)
        return {"predictions": [labels[k] for k in best.tolist()],
                "probabilities": np.round(out.astype(np.float64), 7).tolist(), "classes": list(labels)}
    return {"predictions": out.reshape(len(out)).astype(np.float64).tolist()}
