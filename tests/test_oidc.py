"""An external OpenID Connect issuer (optional): its RS256/ES256 tokens are accepted for the Trainyard user the
configured claim names; anything else about them is a 401. The JWKS is served on loopback by the test (the edge
of the world: a real HTTP server, a key made here)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from entrypoints.bootstrap import build_services
from infra.settings import Settings
from tests.support.auth import bearer, signed_in_client

ISSUER, AUDIENCE = "https://idp.example.test", "trainyard"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    body = json.dumps({"keys": [_jwk(RSA_KEY, "r1", "RS256"), _jwk(EC_KEY, "e1", "ES256")]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()


@pytest.fixture(scope="module")
def client(module_database_url: str, clickhouse: Any, jwks_url: str) -> Iterator[Any]:
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent, oidc_issuer=ISSUER,
                                       oidc_jwks_url=jwks_url, oidc_audience=AUDIENCE, oidc_user_claim="email"))
    with signed_in_client(services) as c:
        yield c
    services.close()


def token(key: Any = RSA_KEY, kid: str = "r1", alg: str = "RS256", **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "email": "Grace@example.test",
              "iat": now, "exp": now + 300, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def test_an_issuers_token_maps_to_the_user_its_claim_names_and_nothing_else_passes(client: Any) -> None:
    anonymous = type(client)(client.app, raise_server_exceptions=False)
    assert anonymous.get("/api/v1/me", headers=bearer(token())).status_code == 401  # no such user yet
    r = client.post("/api/v1/users", json={"name": "grace", "password": "a long enough passphrase"})
    assert r.status_code == 201, r.text
    for good in (token(), token(EC_KEY, "e1", "ES256")):
        r = anonymous.get("/api/v1/me", headers=bearer(good))
        assert r.status_code == 200 and r.json()["name"] == "grace", r.text
    now = int(time.time())
    bad = {
        "signed by another key": token(OTHER_KEY),
        "wrong audience": token(aud="someone-else"),
        "expired": token(exp=now - 60, iat=now - 600),
        "no sub": token(sub=None),
        "HS256 with the public key as secret": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "email": "grace@example.test", "iat": now, "exp": now + 60},
            "not-a-key-but-long-enough-for-hmac-0123456789", algorithm="HS256", headers={"kid": "r1"}),
        "alg none": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "email": "grace@example.test",
                                "iat": now, "exp": now + 60}, None, algorithm="none"),
        "unknown kid": token(kid="nope"),
    }
    for what, credential in bad.items():
        assert anonymous.get("/api/v1/me", headers=bearer(credential)).status_code == 401, what
