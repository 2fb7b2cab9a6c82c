"""Secrets and their stored forms: passwords (argon2id, argon2-cffi), API and refresh tokens (random, kept as
sha256), and access tokens (JWT, PyJWT, one algorithm pinned). Nothing here stores or logs a secret."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "ty_"  # API tokens (personal and service-account)
REFRESH_PREFIX = "tyr_"  # refresh tokens: tyr_<session id hex>_<secret>
PREFIX_SHOWN = 10
ISSUER = "trainyard"
AUDIENCE = "trainyard-api"
ALGORITHM = "HS256"  # pinned: a token naming any other algorithm (none included) is refused
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
# The commonest passwords of public breach lists; a password equal to one of these (case-insensitively) or to the
# user's name is refused whatever its length.
COMMON_PASSWORDS = frozenset("""
123456 123456789 12345678 password qwerty123 qwerty1 111111 12345 secret 123123 1234567890 1234567 000000 qwerty
abc123 password1 iloveyou 1q2w3e4r 123321 qwertyuiop 654321 666666 987654321 123qwe 1qaz2wsx 7777777 123abc
password123 passw0rd welcome admin admin123 letmein monkey dragon football baseball trustno1 sunshine princess
qwerty12345 qazwsxedc 1q2w3e4r5t6y zaq12wsx changeme changeme123 administrator rootroot trainyard trainyard123
passwordpassword p@ssw0rd p@ssword welcome123 welcome1 superman batman starwars whatever master hello123
iloveyou123 1234qwer asdfghjkl asdfasdf zxcvbnm 123456789a aa123456 abcd1234 abcdefg abcdefgh 11111111 00000000
12341234 88888888 99999999 123456789012 1234567890123 qwerty123456 q1w2e3r4t5y6 password12345 correcthorsebatterystaple
""".split())

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class WeakPassword(ValueError):
    pass


def check_password(password: Any, user: str = "") -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise WeakPassword(f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if password.lower() in COMMON_PASSWORDS or (user and password.lower() == user.lower()):
        raise WeakPassword("is one of the most common passwords (or your name): choose another")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise WeakPassword("must not contain control characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password: str, password_hash: str | None) -> bool:
    if not password_hash:
        _hasher.hash(password)  # the same work as a real check, so timing does not tell whether the user exists
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_token() -> tuple[str, str, str]:
    """(token shown once, its sha256, its shown prefix)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, sha256(token), token[:PREFIX_SHOWN]


def new_refresh_token(session_id: uuid.UUID) -> tuple[str, str]:
    """(refresh token shown once, the sha256 of its secret part)."""
    secret = secrets.token_urlsafe(32)
    return f"{REFRESH_PREFIX}{session_id.hex}_{secret}", sha256(secret)


def parse_refresh_token(token: str) -> tuple[uuid.UUID, str] | None:
    """(session id, secret) of a well-formed refresh token, else None."""
    if not isinstance(token, str) or not token.startswith(REFRESH_PREFIX) or len(token) > 200:
        return None
    session_hex, _, secret = token[len(REFRESH_PREFIX):].partition("_")
    try:
        return uuid.UUID(hex=session_hex), secret
    except ValueError:
        return None


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class AccessClaims:
    principal: str
    session_id: str
    jti: str
    expires_at: float


class InvalidAccessToken(Exception):
    pass


class AccessTokens:
    """Signs and checks short-lived access tokens with one secret shared by the service's processes."""

    def __init__(self, secret: bytes, ttl_s: float = 900.0) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 bytes")
        self.secret, self.ttl_s = secret, ttl_s

    def issue(self, principal: str, session_id: uuid.UUID, now: float | None = None) -> tuple[str, float]:
        """(access token, expires_at)."""
        now = time.time() if now is None else now
        exp = now + self.ttl_s
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": principal, "sid": str(session_id),
                  "jti": uuid.uuid4().hex, "iat": int(now), "exp": int(exp)}
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), exp

    def check(self, token: str) -> AccessClaims:
        """The claims of a valid token; InvalidAccessToken for a wrong signature, algorithm, issuer, audience, an
        expired one or one without the claims we issue."""
        try:
            c = jwt.decode(token, self.secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                           options={"require": ["iss", "aud", "sub", "exp", "iat", "jti", "sid"]})
        except jwt.PyJWTError as e:
            raise InvalidAccessToken(str(e)) from None
        if not isinstance(c.get("sub"), str) or not isinstance(c.get("sid"), str):
            raise InvalidAccessToken("malformed claims")
        return AccessClaims(c["sub"], c["sid"], str(c["jti"]), float(c["exp"]))


class OidcTokens:
    """Tokens of an external OpenID Connect issuer (RS256/ES256, keys from its JWKS URL, cached and refreshed by
    PyJWT's PyJWKClient): `check` returns the name of the Trainyard user the token maps to (its `user_claim`:
    `sub`, `email`, `preferred_username`, …), which must exist — an issuer vouches for identity, not membership."""

    ALGORITHMS = ["RS256", "ES256"]

    def __init__(self, issuer: str, jwks_url: str, audience: str, user_claim: str = "sub") -> None:
        self.issuer, self.audience, self.user_claim = issuer, audience, user_claim
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def is_theirs(self, token: str) -> bool:
        """Whether `token` claims to come from this issuer (unverified: only to pick the verifier)."""
        try:
            return jwt.decode(token, options={"verify_signature": False}).get("iss") == self.issuer
        except jwt.PyJWTError:
            return False

    def check(self, token: str) -> str:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=self.ALGORITHMS, audience=self.audience,
                                issuer=self.issuer, options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        except (jwt.PyJWTError, jwt.PyJWKClientError) as e:
            raise InvalidAccessToken(str(e)) from None
        name = claims.get(self.user_claim)
        if not isinstance(name, str) or not name:
            raise InvalidAccessToken(f"the token has no {self.user_claim!r} claim")
        if self.user_claim == "email":
            name = name.split("@", 1)[0].lower()
        return name
