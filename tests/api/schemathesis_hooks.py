"""Schemathesis hooks for tests/api/contract_tools.rs: real bearer tokens.

Every protected operation gets a real token of the account named by
ALLOT_FUZZ_USERNAME / ALLOT_FUZZ_PASSWORD at ALLOT_FUZZ_URL (a plain user or an
admin; the Rust test creates it). `refresh` and `logout` use up or revoke the
token they are given, so each of their cases logs in anew and gets a token of
its own: `refresh` the refresh token, `logout` the access or refresh token in
turn. `delete_me` and `change_password` end every session of the account they
act on, so each of their cases registers a throwaway account and uses its token.
Every other case shares one access token, which therefore stays valid.
"""

import itertools
import json
import os
import urllib.request
import uuid

import schemathesis

BASE_URL = os.environ["ALLOT_FUZZ_URL"].rstrip("/")
CREDENTIALS = json.dumps(
    {
        "username": os.environ["ALLOT_FUZZ_USERNAME"],
        "password": os.environ["ALLOT_FUZZ_PASSWORD"],
    }
).encode()


def log_in() -> dict:
    request = urllib.request.Request(
        f"{BASE_URL}/users/login",
        data=CREDENTIALS,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def throwaway_account() -> dict:
    """A new account's token pair (registration is open in testing)."""
    body = json.dumps(
        {"username": f"throwaway-{uuid.uuid4().hex[:12]}", "password": os.environ["ALLOT_FUZZ_PASSWORD"]}
    ).encode()
    request = urllib.request.Request(
        f"{BASE_URL}/users/registration",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


# No caching (refresh_interval=None) and no retry on 401 (retry_on=[]): each
# case gets the token chosen below, and a 401 is checked, never retried.
@schemathesis.auth(refresh_interval=None, retry_on=[])
class AllotTokens:
    def __init__(self) -> None:
        self.shared_access_token = None
        self.logout_kinds = itertools.cycle(["access_token", "refresh_token"])

    def get(self, case, context):
        operation_id = case.operation.definition.raw.get("operationId")
        if operation_id == "refresh":
            return log_in()["refresh_token"]
        if operation_id == "logout":
            return log_in()[next(self.logout_kinds)]
        if operation_id in ("delete_me", "change_password"):
            return throwaway_account()["access_token"]
        if self.shared_access_token is None:
            self.shared_access_token = log_in()["access_token"]
        return self.shared_access_token

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
