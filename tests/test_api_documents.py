"""The OpenAPI and AsyncAPI documents keep their meaning: against the documents recorded before the house-in-order
work, every path, method, parameter, request and response property, type and enum value is the same. Order,
descriptions, titles and examples do not count, nor where a schema is written (inline or under components: both
are compared resolved). What may change: a constraint added or made stricter (lengths, patterns, ranges, item
counts), a 400 problem+json answer added to an operation, a 200 added to an operation that takes an
Idempotency-Key (the repeat's answer, which it always gave), an optional query parameter added to an operation (with
the problem+json 422 that validates it, where the operation had none: old callers send what they always sent), an
integer query parameter that also takes a duration string (`anyOf` the same integer or a string of
duration_pattern for its bounds: old callers' seconds still mean the same), and a
new operation (a method on a path the old
document lacked) whose error answers are problem+json and which, when it takes path parameters, answers 404;
and a property added to a response body or to a message Trainyard publishes (a reader ignores what it does not
know; request bodies stay exactly as they were). And access control (issue 17, a deliberate change every caller
meets once): every operation may require the bearer scheme, declare its `x-trainyard-action`, take the optional
project (`X-Trainyard-Project` header or `project` query) and answer 401/403 problem+json (and 429 where a quota
applies); the `X-Trainyard-Actor` header is gone (the actor is the authenticated principal). And code jobs (issue
19, a deliberate addition): the framework `python` in every framework enum, the work kind `code`, and a job's submit may carry `code` and
`resources` and leave out `dataset` (old callers send what they always sent). Nothing else."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

from api.app import create_app
from api.asyncapi import document
from api.schemas.common import duration_pattern
from domain.vocabulary import TASK_METRICS
from infra.dataset_files import IMAGE_ARCHIVE_SUFFIXES
from infra.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = {"description", "title", "summary", "examples", "example"}
LOWER = {"minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum"}  # may only rise
UPPER = {"maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum"}  # may only fall
CONSTRAINTS = LOWER | UPPER | {"pattern", "multipleOf"}
UNORDERED = {"enum", "required", "tags"}


def resolve(node: Any, root: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """`node` with every local $ref replaced by what it points at (siblings of the $ref kept) and one-element
    allOf wrappers merged in."""
    if isinstance(node, list):
        return [resolve(item, root, seen) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[unquote(part).replace("~1", "/").replace("~0", "~")]
        node = {**resolve(target, root, seen + (ref,)), **node}
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
        node = {**resolve(node.pop("allOf")[0], root, seen), **node}
    return {key: resolve(value, root, seen) for key, value in node.items()}


def meaning(node: Any, parent: str = "") -> Any:
    """What the comparison sees: no words, no constraints, lists that are sets sorted, parameters by name."""
    if isinstance(node, list):
        items = [meaning(item) for item in node]
        if parent == "parameters":
            return {f"{p.get('in')}:{p.get('name')}": p for p in items}
        return sorted(items, key=json.dumps) if parent in UNORDERED else items
    if not isinstance(node, dict):
        return node
    return {key: meaning(value, key) for key, value in node.items()
            if key not in WORDS and key not in CONSTRAINTS}


def constraints(node: Any, path: str = "") -> dict[str, Any]:
    """Every constraint keyword in the document, by where it is."""
    found: dict[str, Any] = {}
    if isinstance(node, list):
        for i, item in enumerate(node):
            found.update(constraints(item, f"{path}/{i}"))
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in CONSTRAINTS and not isinstance(value, dict):
                found[f"{path}/{key}"] = value
            elif key not in WORDS:
                found.update(constraints(value, f"{path}/{key}"))
    return found


def loosened(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The constraints of `before` that `after` dropped or relaxed. A bound may move inwards; an inclusive one may
    become an exclusive one at least as far in, and an exclusive one an inclusive one strictly further in."""
    out = []
    for where, old in before.items():
        base, key = where.rsplit("/", 1)
        if key in LOWER | UPPER:
            lower = key in LOWER
            pair = {"minimum", "exclusiveMinimum"} if lower else {"maximum", "exclusiveMaximum"}
            kinds = pair if key in pair else {key}
            news = [(k, after[f"{base}/{k}"]) for k in kinds if f"{base}/{k}" in after]
            kept = any((n > old if lower else n < old) or (n == old and (k == key or k.startswith("exclusive")))
                       for k, n in news)
        else:
            kept = after.get(where) == old
        if not kept:
            out.append(f"{where}: {old} -> {after.get(where, 'gone')}")
    return out


def without_added_400s(after: dict[str, Any], before: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`after` less the 400 answers `before` lacked, and any of those that is not a problem+json body; less the 200
    answers `before` lacked on operations with an Idempotency-Key, and any of those that is not JSON."""
    after = json.loads(json.dumps(after))
    wrong = []
    for path, methods in after.get("paths", {}).items():
        for method, operation in methods.items():
            old = before.get("paths", {}).get(path, {}).get(method, {}).get("responses", {})
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            if "400" in responses and "400" not in old:
                if "application/problem+json" not in responses.pop("400").get("content", {}):
                    wrong.append(f"{method.upper()} {path}")
            idempotent = any(p.get("name") == "Idempotency-Key" for p in operation.get("parameters", []))
            if idempotent and "200" in responses and "200" not in old:
                if "application/json" not in responses.pop("200").get("content", {}):
                    wrong.append(f"{method.upper()} {path}")
    return after, wrong


def without_added_optional_query_parameters(after: dict[str, Any],
                                            before: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`after` less the optional query parameters its old operations gained, and less the 422 answer an operation
    gained with them; any such 422 that is not a problem+json body is listed as wrong."""
    after = json.loads(json.dumps(after))
    wrong = []
    for path, methods in after.get("paths", {}).items():
        for method, operation in methods.items():
            old = before.get("paths", {}).get(path, {}).get(method)
            if not (isinstance(operation, dict) and isinstance(old, dict)):
                continue
            known = {(p.get("in"), p.get("name")) for p in old.get("parameters", [])}
            params = operation.get("parameters", [])
            added = [p for p in params if p.get("in") == "query" and not p.get("required")
                     and (p.get("in"), p.get("name")) not in known]
            if not added:
                continue
            operation["parameters"] = [p for p in params if p not in added]
            if not operation["parameters"] and "parameters" not in old:
                del operation["parameters"]
            responses = operation.get("responses", {})
            if "422" in responses and "422" not in old.get("responses", {}):
                if "application/problem+json" not in responses.pop("422").get("content", {}):
                    wrong.append(f"{method.upper()} {path}")
    return after, wrong


def without_new_operations(after: dict[str, Any], before: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`after` less the operations `before` lacked (OpenAPI paths' methods; AsyncAPI channels, their operations and
    messages); those whose error answers are not all problem+json, or that take path parameters without answering 404
    for an unknown object, are listed as wrong."""
    after = json.loads(json.dumps(after))
    wrong = []
    for path, methods in list(after.get("paths", {}).items()):
        for method in [m for m in methods if m not in before.get("paths", {}).get(path, {})]:
            operation = methods.pop(method)
            errors = {code: answer for code, answer in operation.get("responses", {}).items() if code[0] in "45"}
            if any("application/problem+json" not in answer.get("content", {}) for answer in errors.values()):
                wrong.append(f"{method.upper()} {path}: an error answer that is not problem+json")
            if "{" in path and "404" not in errors:
                wrong.append(f"{method.upper()} {path}: no 404 for an unknown object")
        if not methods:
            del after["paths"][path]
    # AsyncAPI: a new subject is a new channel, its operation and its message
    for key in ("channels", "operations"):
        for name in set(after.get(key) or {}) - set(before.get(key) or {}):
            del after[key][name]
    messages = (after.get("components") or {}).get("messages") or {}
    for name in set(messages) - set((before.get("components") or {}).get("messages") or {}):
        del messages[name]
    return after, wrong


def without_added_response_properties(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """`after` less the properties its response bodies have and `before`'s lack (at the same place); in the
    AsyncAPI document every message is one Trainyard sends (its operations are all `send`), so its payloads count
    as responses."""
    after = json.loads(json.dumps(after))

    def prune(new: Any, old: Any) -> None:
        if isinstance(new, list) and isinstance(old, list):
            for n, o in zip(new, old):
                prune(n, o)
        if not (isinstance(new, dict) and isinstance(old, dict)):
            return
        if isinstance(new.get("properties"), dict) and isinstance(old.get("properties"), dict):
            added = set(new["properties"]) - set(old["properties"])
            for name in added:
                del new["properties"][name]
            if isinstance(new.get("required"), list):
                new["required"] = [r for r in new["required"] if r not in added]
        for key in set(new) & set(old):
            prune(new[key], old[key])

    for path, methods in after.get("paths", {}).items():
        for method, operation in methods.items():
            old = before.get("paths", {}).get(path, {}).get(method, {})
            if isinstance(operation, dict) and isinstance(old, dict):
                prune(operation.get("responses"), old.get("responses"))
    operations = after.get("operations", {}).values()
    if operations and all(isinstance(o, dict) and o.get("action") == "send" for o in operations):
        for key in ("channels", "operations", "components"):
            prune(after.get(key), before.get(key))
    return after


def without_schedules(after: dict[str, Any]) -> dict[str, Any]:
    """`after` (resolved AsyncAPI) without what schedules and retrains (issue 20, deliberate additions) publish: the
    `schedule.*` and `retrain.*` channels, their operations and messages, and both among the envelope's
    aggregates."""
    after = json.loads(json.dumps(after))
    for section in (after, after.get("components") or {}):
        for key in ("channels", "operations", "messages"):
            for name in [n for n in section.get(key) or {} if any(
                    n.startswith(f"{a}.") or n.startswith(f"{a}_") or n.lower().startswith(f"{a}:")
                    for a in ("schedule", "retrain"))]:
                del section[key][name]

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if isinstance(node.get("enum"), list) and "training_job" in node["enum"]:
                node["enum"] = [v for v in node["enum"] if v not in ("schedule", "retrain")]
            for value in node.values():
                walk(value)

    walk(after)
    return after


NEW_TASKS = ("forecasting", "image_classification")  # tasks added after the snapshot, with their builtin datasets,
NEW_BUILTINS = ("demand", "digits")  # the file suffixes they read and their blocks in a dataset
NEW_FILE_SUFFIXES = IMAGE_ARCHIVE_SUFFIXES  # ImageFolder archives (image_classification)
NEW_DATASET_FIELDS = ("forecast",)


def without_new_tasks(after: dict[str, Any]) -> dict[str, Any]:
    """`after` (resolved) without what new tasks added: their values in the task enums, their builtin datasets in
    the dataset URI pattern and their blocks in a dataset."""
    after = json.loads(json.dumps(after))

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if isinstance(node.get("enum"), list) and "regression" in node["enum"]:
                node["enum"] = [v for v in node["enum"] if v not in NEW_TASKS]
            if isinstance(node.get("pattern"), str) and "builtin://" in node["pattern"]:
                for name in NEW_BUILTINS:
                    node["pattern"] = node["pattern"].replace(f"|{name}", "")
                for suffix in NEW_FILE_SUFFIXES:  # written as the schema writes a suffix: any case, dots escaped
                    node["pattern"] = node["pattern"].replace("|" + "".join(
                        f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in suffix), "")
            props = node.get("properties")
            if isinstance(props, dict) and {"uri", "target"} <= set(props):
                for name in NEW_DATASET_FIELDS:
                    props.pop(name, None)
            for value in node.values():
                walk(value)

    walk(after)
    return after


STUDY_METRIC_PATTERN = f"^({'|'.join(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))})$"


def without_code_jobs(after: dict[str, Any]) -> dict[str, Any]:
    """`after` (resolved) without what code jobs added: `python` in the framework enums, `code` in the work kinds,
    the submit's `code`, `resources` and optional `dataset`, and a study's `code`, `resources` and free objective
    metric (a study of code optimizes a metric its script names; a built-in's is still checked against its task)."""
    after = json.loads(json.dumps(after))

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if isinstance(node.get("enum"), list) and "lightgbm" in node["enum"]:
                node["enum"] = [v for v in node["enum"] if v != "python"]
            if isinstance(node.get("enum"), list) and {"training", "export"} <= set(node["enum"]):
                node["enum"] = [v for v in node["enum"] if v != "code"]  # the work kind of code jobs
            for value in node.values():
                walk(value)

    walk(after)
    submit = after.get("paths", {}).get("/api/v1/training/jobs", {}).get("post", {})
    for media in submit.get("requestBody", {}).get("content", {}).values():
        body = media.get("schema", {})
        props = body.get("properties", {})
        for name in ("code", "resources", "validation"):  # validation: an optional split of a job's rows
            props.pop(name, None)
        dataset = props.get("dataset", {})
        branches = [b for b in dataset.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            dataset.update(branches[0])
            dataset.pop("default", None)
            body["required"] = [*body.get("required", []), "dataset"]
    study = after.get("paths", {}).get("/api/v1/studies", {}).get("post", {})
    for media in study.get("requestBody", {}).get("content", {}).values():  # a study of code: its code, resources
        props = media.get("schema", {}).get("properties", {})  # and any metric the script finishes with
        for name in ("code", "resources", "validation"):
            props.pop(name, None)
        metric = props.get("objective", {}).get("properties", {}).get("metric", {})
        if metric and "pattern" not in metric:
            metric["pattern"] = STUDY_METRIC_PATTERN
    return after


ACCESS_ANSWERS = ("401", "403", "429")


def without_access_control(after: dict[str, Any], before: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                                  list[str]]:
    """`after` less its security requirements, actions, 401/403 answers (each must be problem+json) and security
    schemes; `before` less the X-Trainyard-Actor header."""
    after, before = json.loads(json.dumps(after)), json.loads(json.dumps(before))
    wrong = []
    for path, methods in after.get("paths", {}).items():
        for method, operation in methods.items():
            if not isinstance(operation, dict):
                continue
            operation.pop("security", None)
            operation.pop("x-trainyard-action", None)
            if "parameters" in operation:
                operation["parameters"] = [p for p in operation["parameters"] if not (
                    (p.get("in"), p.get("name")) in (("header", "X-Trainyard-Project"), ("query", "project"))
                    and not p.get("required"))]
                if not operation["parameters"]:
                    operation.pop("parameters")
            for status in ACCESS_ANSWERS:
                answer = operation.get("responses", {}).pop(status, None)
                if answer is not None and "application/problem+json" not in answer.get("content", {}):
                    wrong.append(f"{method.upper()} {path} {status}")
    (after.get("components") or {}).pop("securitySchemes", None)
    for methods in before.get("paths", {}).values():
        for operation in methods.values():
            if isinstance(operation, dict) and "parameters" in operation:
                operation["parameters"] = [p for p in operation["parameters"] if p.get("name") != "X-Trainyard-Actor"]
    return after, before, wrong


def without_duration_strings(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """`after` with each integer query parameter of `before` that became `anyOf` [that integer, a duration string]
    shown as the integer alone (whose constraints are then compared as usual)."""
    after = json.loads(json.dumps(after))
    for path, operations in after.get("paths", {}).items():
        for method, operation in operations.items():
            old = {p.get("name"): p for p in (before.get("paths", {}).get(path, {}).get(method) or {})
                   .get("parameters", [])}
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                schema, was = parameter.get("schema", {}), old.get(parameter.get("name"), {}).get("schema", {})
                branches = schema.get("anyOf", [])
                if (parameter.get("in") == "query" and was.get("type") == "integer" and len(branches) == 2
                        and branches[0].get("type") == "integer" and {"minimum", "maximum"} <= set(branches[0])
                        and branches[1] == {"type": "string", "pattern": duration_pattern(
                            branches[0]["minimum"], branches[0]["maximum"], branches[0].get("multipleOf"))}):
                    parameter["schema"] = {**{k: v for k, v in schema.items() if k != "anyOf"}, **branches[0]}
    return after


def without_packed_columns(node: Any) -> Any:
    """`node` with each schema that became `anyOf` [its array, a packed string] (a telemetry column that may also
    travel as base64: domain/contract.py SeriesChunk) shown as the array alone."""
    if isinstance(node, list):
        return [without_packed_columns(n) for n in node]
    if not isinstance(node, dict):
        return node
    branches = node.get("anyOf", [])
    if (len(branches) == 2 and branches[0].get("type") == "array" and branches[1].get("type") == "string"
            and branches[1].get("description", "").startswith("packed: base64")):
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **branches[0]}
    return {k: without_packed_columns(v) for k, v in node.items()}


def compare(before: dict[str, Any], after: dict[str, Any]) -> None:
    before, after = resolve(before, before), resolve(after, after)
    after = without_code_jobs(after)
    after = without_new_tasks(after)
    after = without_schedules(after)
    after = without_duration_strings(after, before)
    after = without_packed_columns(after)
    after, before, wrong = without_access_control(after, before)
    assert not wrong, f"401/403 answers that are not problem+json: {wrong}"
    after = without_added_response_properties(after, before)
    after, wrong = without_new_operations(after, before)
    assert not wrong, f"new operations without problem+json answers: {wrong}"
    after, wrong = without_added_400s(after, before)
    assert not wrong, f"added 400 answers that are not problem+json: {wrong}"
    after, wrong = without_added_optional_query_parameters(after, before)
    assert not wrong, f"422 answers added with a query parameter that are not problem+json: {wrong}"
    old_components = (before.get("components") or {}).pop("schemas", {})
    new_components = (after.get("components") or {}).pop("schemas", {})
    assert set(old_components) <= set(new_components), set(old_components) - set(new_components)
    assert meaning(after) == meaning(before)
    relaxed = loosened(constraints(before), constraints(after))
    assert not relaxed, f"constraints dropped or relaxed: {relaxed}"


def openapi() -> dict[str, Any]:
    return create_app(SimpleNamespace(settings=Settings())).openapi()  # type: ignore[arg-type]


def test_the_openapi_document_keeps_its_meaning() -> None:
    compare(json.loads((FIXTURES / "openapi-before-house-in-order.json").read_text()), openapi())


def test_the_asyncapi_document_keeps_its_meaning() -> None:
    compare(json.loads((FIXTURES / "asyncapi-before-house-in-order.json").read_text()), json.loads(document()))


def test_the_comparison_sees_a_changed_meaning() -> None:
    """The check can fail: a renamed property, a lost enum value, a relaxed bound or an undocumented answer."""
    before = {"paths": {"/x": {"post": {"responses": {"200": {}}, "requestBody": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/In"}}}}}}},
        "components": {"schemas": {"In": {"type": "object", "properties": {
            "a": {"type": "string", "maxLength": 10}, "b": {"enum": ["p", "q"], "type": "string"},
            "c": {"type": "number", "exclusiveMinimum": 0}}}}}}

    def changed(edit: Any) -> dict[str, Any]:
        after = json.loads(json.dumps(before))
        edit(after)
        return after

    schema = ("components", "schemas", "In", "properties")

    def props(doc: dict[str, Any]) -> dict[str, Any]:
        node: Any = doc
        for key in schema:
            node = node[key]
        return node

    compare(before, changed(lambda d: props(d)["a"].update(maxLength=5, pattern="^[a-z]*$")))
    compare(before, changed(lambda d: props(d)["c"].update(minimum=0.01)))
    compare(before, changed(lambda d: d["paths"]["/x"]["post"]["responses"].update(
        {"400": {"content": {"application/problem+json": {}}}})))
    for edit in (lambda d: props(d).update(z=props(d).pop("a")),
                 lambda d: props(d)["b"].update(enum=["p"]),
                 lambda d: props(d)["a"].update(maxLength=11),
                 lambda d: props(d)["c"].pop("exclusiveMinimum"),
                 lambda d: d["paths"]["/x"]["post"]["responses"].update({"409": {}})):
        try:
            compare(before, changed(edit))
        except AssertionError:
            continue
        raise AssertionError("a change of meaning passed the comparison")


def test_only_an_idempotent_operation_may_add_its_200() -> None:
    def document(parameters: list[dict[str, Any]], responses: dict[str, Any]) -> dict[str, Any]:
        return {"paths": {"/x": {"post": {"parameters": parameters, "responses": responses}}}}

    key = [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}]
    repeat = {"202": {}, "200": {"content": {"application/json": {}}}}
    compare(document(key, {"202": {}}), document(key, repeat))
    for before, after in ((document([], {"202": {}}), document([], repeat)),
                          (document(key, {"202": {}}), document(key, {"202": {}, "200": {}}))):
        try:
            compare(before, after)
        except AssertionError:
            continue
        raise AssertionError("an added 200 passed the comparison")


def test_a_new_operation_may_be_added_with_problem_answers() -> None:
    problem = {"content": {"application/problem+json": {}}}
    before = {"paths": {"/x": {"post": {"responses": {"201": {}}}}}}
    new = {"get": {"responses": {"200": {}, "404": problem}}}
    compare(before, {"paths": {**before["paths"], "/x/{id}": new}})
    compare(before, {"paths": {"/x": {**before["paths"]["/x"], "get": {"responses": {"200": {}}}}}})
    for after in ({"paths": {**before["paths"], "/x/{id}": {"get": {"responses": {"200": {}}}}}},
                  {"paths": {**before["paths"], "/y": {"get": {"responses": {"200": {}, "422": {}}}}}},
                  {"paths": {"/x": {"post": {"responses": {"201": {}, "409": {}}}}, "/y": new}}):
        try:
            compare(before, after)
        except AssertionError:
            continue
        raise AssertionError("a new operation without problem answers, or a changed old one, passed")


def test_a_response_may_gain_a_property_and_a_request_may_not() -> None:
    def document(where: str, properties: dict[str, Any]) -> dict[str, Any]:
        body = {"content": {"application/json": {"schema": {"type": "object", "properties": properties}}}}
        operation = {"responses": {"200": body}} if where == "response" else {"requestBody": body, "responses": {}}
        return {"paths": {"/x": {"post": operation}}}

    old, new = {"a": {"type": "string"}}, {"a": {"type": "string"}, "b": {"type": "integer"}}
    compare(document("response", old), document("response", new))
    for before, after in ((document("request", old), document("request", new)),
                          (document("response", old), document("response", {"a": {"type": "integer"}}))):
        try:
            compare(before, after)
        except AssertionError:
            continue
        raise AssertionError("a changed request body or response property passed the comparison")


def test_an_operation_may_gain_an_optional_query_parameter_only() -> None:
    problem = {"content": {"application/problem+json": {}}}
    before = {"paths": {"/x": {"get": {"responses": {"200": {}}}}}}

    def gained(parameter: dict[str, Any], responses: dict[str, Any]) -> dict[str, Any]:
        return {"paths": {"/x": {"get": {"parameters": [parameter], "responses": {"200": {}, **responses}}}}}

    optional = {"name": "id_prefix", "in": "query", "required": False, "schema": {"type": "string"}}
    compare(before, gained(optional, {"422": problem}))
    for after in (gained({**optional, "required": True}, {"422": problem}),
                  gained({**optional, "in": "header"}, {}),
                  gained(optional, {"422": {"content": {"application/json": {}}}})):
        try:
            compare(before, after)
        except AssertionError:
            continue
        raise AssertionError("a required or non-query parameter, or a 422 that is not problem+json, passed")


def test_only_an_integer_query_parameter_may_also_take_a_duration_string() -> None:
    def document(schema: dict[str, Any]) -> dict[str, Any]:
        return {"paths": {"/x": {"get": {"parameters": [{"name": "bucket", "in": "query", "schema": schema}],
                                         "responses": {}}}}}
    seconds = {"type": "integer", "minimum": 60, "maximum": 3600}
    pattern = duration_pattern(60, 3600)
    compare(document(seconds), document({"anyOf": [seconds, {"type": "string", "pattern": pattern}]}))
    for wrong in ({"anyOf": [seconds, {"type": "string"}]},  # any string
                  {"anyOf": [seconds, {"type": "string", "pattern": duration_pattern(60, 7200)}]},  # wider
                  {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": pattern}]}):  # no bounds
        try:
            compare(document(seconds), document(wrong))
        except AssertionError:
            continue
        raise AssertionError(f"{wrong} passed")
