"""Bearer API keys: known by their SHA-256 digests, compared in constant time, with scopes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request
from fastapi.security import HTTPBearer

from atp_service.api.errors import ProblemError
from atp_service.api.middleware import CALLER_SCOPE_KEY
from atp_service.config import ALL_SCOPES, ApiKeySpec, Scope

#: The scope of operators: it grants every other scope, and acts on any reservation.
ADMIN: Scope = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the configured name of the key and the scopes it grants.

    ``admin`` grants every scope (``principal_of``): an operator's key reads availability
    and acts on reservations too.
    """

    name: str
    scopes: frozenset[str]

    @property
    def reservation_caller(self) -> str | None:
        """Whose reservations this key may see and act on: its own (its name), or with
        ``admin`` any (None). The one answer every reservation route passes to the store
        as ``caller`` (see store/reservations.py); nothing else decides it.
        """
        return None if ADMIN in self.scopes else self.name


def principal_of(spec: ApiKeySpec) -> Principal:
    scopes = frozenset(spec.scopes)
    if ADMIN in scopes:
        scopes = frozenset(ALL_SCOPES)
    return Principal(spec.name, scopes)


#: Keys verified once and remembered, at most (only keys that matched a configured digest).
_VERIFIED_MAX = 1024


class KeyRing:
    """The configured keys; only their digests are kept."""

    def __init__(self, specs: Sequence[ApiKeySpec]) -> None:
        self._entries = [(bytes.fromhex(spec.digest), principal_of(spec)) for spec in specs]
        # A key that matched is remembered, so the next request with it skips the SHA-256
        # and the comparisons. Finding it is a dict lookup by the (per-process randomised)
        # string hash: it tells an attacker nothing about keys they do not already hold.
        self._verified: dict[str, Principal] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def principal(self, key: str) -> Principal | None:
        """The key's principal, or None; every digest is compared, so timing tells nothing."""
        known_key = self._verified.get(key)
        if known_key is not None:
            return known_key
        digest = hashlib.sha256(key.encode()).digest()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(digest, known):
                found = principal
        if found is not None and len(self._verified) < _VERIFIED_MAX:
            self._verified[key] = found
        return found


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


_CHALLENGE = 'Bearer realm="atp"'


class ScopedBearer(HTTPBearer):
    """A dependency that authenticates the caller and demands one scope.

    Subclassing HTTPBearer puts the bearer scheme into the OpenAPI document.
    """

    def __init__(self, scope: Scope) -> None:
        super().__init__(
            bearerFormat="API key",
            scheme_name="ApiKey",
            description="`Authorization: Bearer <api key>`; scopes: "
            "availability:read, reservations:write, admin (grants every scope).",
            auto_error=False,
        )
        self.scope = scope
        self._forbidden_challenge = f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        scope = request.scope
        keyring: KeyRing = scope["app"].state.atp.keyring
        authorization: str | None = None
        for name, value in scope["headers"]:  # as Request.headers would, without building it
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        token = _bearer_token(authorization)
        if token is None:
            raise ProblemError(
                401,
                "unauthorized",
                "an API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        principal = keyring.principal(token)
        if principal is None:
            raise ProblemError(
                401,
                "unauthorized",
                "the API key is not known",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        if CALLER_SCOPE_KEY not in scope:  # the first check of this request
            scope[CALLER_SCOPE_KEY] = principal.name
            limiter = scope["app"].state.atp.rate_limiter
            if limiter is not None:  # one token a request, however many scopes it asks
                await limiter.check(principal.name)
        if self.scope not in principal.scopes:
            raise ProblemError(
                403,
                "forbidden",
                f"the API key {principal.name!r} lacks the scope {self.scope!r}",
                headers={"WWW-Authenticate": self._forbidden_challenge},
            )
        return principal


_SCOPED: dict[str, ScopedBearer] = {}


def require_scope(scope: Scope) -> ScopedBearer:
    """The dependency demanding ``scope``: ``Depends(require_scope("reservations:write"))``."""
    bearer = _SCOPED.get(scope)
    if bearer is None:
        bearer = _SCOPED[scope] = ScopedBearer(scope)
    return bearer
