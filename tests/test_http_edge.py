"""The HTTP edge of both servers: header size and time limits on a real uvicorn (the protocol the processes run),
trusted hosts, duplicate credentials and CSRF on the API (in-process, real engines) and on the inference server
(a real uvicorn on a free port)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.support.auth import identity_projection, sign_in_owner
from api.app import create_app
from api.edge import SIMPLE_BODY_ROUTES
from entrypoints.bootstrap import build_services
from entrypoints.http_server import server_config
from entrypoints.inference import edge_app
from infra.settings import Settings
from serving.app import InferenceApp
from serving.state import ModelLoader, ServingState, Telemetry

HEADER_TIMEOUT_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inference() -> Iterator[str]:
    """The inference server's app with no deployments, served the way `serve-inference` serves it."""
    port = _free_port()
    settings = Settings(api_host="127.0.0.1", inference_port=port, allowed_hosts=None,
                        http_header_timeout_s=HEADER_TIMEOUT_S, http_body_timeout_s=HEADER_TIMEOUT_S)
    app = InferenceApp(ServingState(ModelLoader(lambda *_: b"")), Telemetry("edge-test"), None)
    server = uvicorn.Server(server_config(edge_app(app, settings), settings, port, log_level="error",
                                          access_log=False, loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _raw(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _read_all(s: socket.socket, within_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took (fails past within_s)."""
    started, out = time.monotonic(), b""
    s.settimeout(within_s)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out, time.monotonic() - started
        out += chunk


def _healthy(address: str) -> None:
    assert httpx.get(f"http://{address}/healthz", timeout=5).status_code == 200


# ---- header size and time (the uvicorn protocol) ------------------------------------------------------------
def test_a_200_kib_header_gets_a_prompt_431_and_the_server_answers_others(inference):
    started = time.monotonic()
    r = httpx.get(f"http://{inference}/healthz", headers={"X-Pad": "a" * 200 * 1024}, timeout=5)
    assert r.status_code == 431
    assert r.headers["content-type"] == "application/problem+json"
    assert time.monotonic() - started < 2
    _healthy(inference)


def test_a_header_sent_forever_is_cut_at_the_limit(inference):
    """A client that streams one endless header is answered once the limit is passed, not when it stops."""
    s = _raw(inference)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + inference.encode() + b"\r\nX-Pad: ")
    answered = b""
    with pytest.raises(OSError):  # the server closes while we still send
        for _ in range(2000):  # up to 2 GB; the server must close long before
            s.sendall(b"a" * 1024 * 1024)
    answered, _ = _read_all(s, 5)
    s.close()
    assert answered in (b"",) or answered.startswith(b"HTTP/1.1 431")
    _healthy(inference)


def test_a_client_that_stalls_half_way_through_its_headers_is_disconnected(inference):
    s = _raw(inference)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + inference.encode() + b"\r\nX-Half: ")
    answer, waited = _read_all(s, HEADER_TIMEOUT_S + 5)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert waited < HEADER_TIMEOUT_S + 2
    _healthy(inference)


def test_a_connection_that_never_sends_a_request_is_closed(inference):
    s = _raw(inference)
    answer, waited = _read_all(s, HEADER_TIMEOUT_S + 5)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408") and waited < HEADER_TIMEOUT_S + 2


def test_a_body_that_stops_arriving_is_disconnected(inference):
    s = _raw(inference)
    s.sendall(b"POST /v1/deployments/x/predict HTTP/1.1\r\nHost: " + inference.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"instances\"")
    _, waited = _read_all(s, HEADER_TIMEOUT_S + 5)
    s.close()
    assert waited < HEADER_TIMEOUT_S + 2


def test_many_slow_header_connections_are_all_closed_and_others_are_served(inference):
    sockets = [_raw(inference) for _ in range(50)]
    for s in sockets:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    _healthy(inference)  # while they hang
    time.sleep(HEADER_TIMEOUT_S + 1)
    for s in sockets:
        answer, _ = _read_all(s, 2)  # already answered and closed: no waiting here
        s.close()
        assert answer.startswith(b"HTTP/1.1 408")


# ---- hosts, duplicate credentials, CSRF: the inference server ----------------------------------------------
def test_inference_refuses_an_unknown_host(inference):
    r = httpx.get(f"http://{inference}/v1/deployments", headers={"Host": "attacker.example"}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "Host"
    # an allowed host gets past the guard: the listing itself then wants a key (401), not a 400 about the host
    assert httpx.get(f"http://{inference}/v1/deployments", headers={"Host": "localhost:1"}, timeout=5).status_code \
        == 401


def test_inference_refuses_two_authorization_headers(inference):
    r = httpx.post(f"http://{inference}/v1/deployments/x/predict", json={"instances": [[1]]}, timeout=5,
                   headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert r.status_code == 400 and r.json()["field"] == "Authorization"
    r = httpx.post(f"http://{inference}/v1/deployments/x/predict", json={"instances": [[1]]}, timeout=5,
                   headers=[("X-API-Key", "a"), ("X-API-Key", "b")])
    assert r.status_code == 400 and r.json()["field"] == "X-API-Key"


def test_inference_refuses_a_form_encoded_predict(inference):
    r = httpx.post(f"http://{inference}/v1/deployments/x/predict", content=b'{"instances": [[1]]}', timeout=5,
                   headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    assert r.headers["content-type"] == "application/problem+json"
    r = httpx.post(f"http://{inference}/v1/deployments/x/predict", json={"instances": [[1]]}, timeout=5)
    assert r.status_code == 401  # JSON goes on to the route (no key given)


# ---- hosts, duplicate credentials, CSRF: the API ---------------------------------------------------------
@pytest.fixture(scope="module")
def api(module_database_url: str, clickhouse, tmp_path_factory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("edge-datasets")
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent,
                                       dataset_roots=str(root), allowed_hosts="testserver,api.example.com"))
    with identity_projection(module_database_url), TestClient(create_app(services), raise_server_exceptions=False) as c:
        sign_in_owner(c, services)
        yield c
    services.close()


def _problem(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field


def test_api_refuses_an_unknown_host_and_answers_its_own(api):
    _problem(api.get("/api/v1/deployments", headers={"Host": "rebound.attacker.example"}), 400, "Host")
    assert api.get("/api/v1/deployments", headers={"Host": "api.example.com:8000"}).status_code == 200
    assert api.get("/api/v1/deployments").status_code == 200  # testserver


def test_default_hosts_are_loopback_and_the_bind_host():
    assert set(Settings(allowed_hosts=None, api_host="10.1.2.3").allowed_host_list) == {
        "localhost", "127.0.0.1", "::1", "[::1]", "10.1.2.3"}
    assert "0.0.0.0" not in Settings(allowed_hosts=None, api_host="0.0.0.0").allowed_host_list


def test_api_refuses_two_authorization_headers_before_any_route(api):
    r = api.post("/api/v1/deployments/nope/rollback", json={},
                 headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    _problem(r, 400, "Authorization")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8",
                                          "multipart/form-data; boundary=x"])
def test_api_state_changing_routes_refuse_simple_request_bodies(api, content_type):
    # a cross-site <form> rollback: refused before the route looks for the deployment (which would be a 404)
    _problem(api.post("/api/v1/deployments/nope/rollback", content=b"reason=x", headers={"Content-Type": content_type}),
             415, "Content-Type")
    _problem(api.patch("/api/v1/deployments/nope/traffic", content=b"{}", headers={"Content-Type": content_type}),
             415, "Content-Type")
    assert api.post("/api/v1/deployments/nope/rollback", json={}).status_code == 404  # JSON reaches the route


def test_api_refuses_state_changing_requests_from_another_origin(api):
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://testserver:3000"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        _problem(api.post("/api/v1/deployments/nope/rollback", json={}, headers=headers), 403, "Origin")
    # a body-less POST and the upload route (exempt from the content-type rule) are covered by the Origin check too
    _problem(api.post("/api/v1/deployments/nope/rollback", headers={"Origin": "http://evil.example"}), 403, "Origin")
    _problem(api.post("/api/v1/datasets", files={"file": ("a.csv", b"a,b\n1,2\n")},
                      headers={"Origin": "http://evil.example"}), 403, "Origin")
    assert api.post("/api/v1/deployments/nope/rollback", json={},
                    headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}).status_code == 404
    assert api.get("/api/v1/deployments", headers={"Origin": "http://evil.example"}).status_code == 200


def test_the_upload_route_still_takes_a_multipart_form(api):
    assert ("POST", "/api/v1/datasets") in SIMPLE_BODY_ROUTES
    rows = "".join(f"{i},{i % 2}\n" for i in range(20))
    r = api.post("/api/v1/datasets", files={"file": ("edge.csv", f"a,b\n{rows}".encode())})
    assert r.status_code == 201, r.text


def test_cors_stays_off(api):
    r = api.options("/api/v1/deployments", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "content-type"})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = api.get("/api/v1/deployments", headers={"Origin": "http://evil.example"})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


# ---- a grid step too fine to count ------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_a_study_with_a_step_of_1e_300_is_a_422_naming_the_step(api, sampler):
    body = {"name": "fine", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "objective": {"metric": "auc", "direction": "maximize"},
            "search_space": {"lambda_l1": {"type": "float", "low": 0, "high": 1, "step": 1e-300}},
            "fixed_params": {"n_estimators": 5}, "sampler": {"type": sampler}, "n_trials": 2}
    _problem(api.post("/api/v1/studies", json=body), 422, "search_space.lambda_l1.step")
