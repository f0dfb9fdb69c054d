"""A whole allot story, told through the Python client generated from
openapi/openapi.yaml: what a team using the spec alone would write.

Run by tests/api/contract_tools.rs, which generates the client into
ALLOT_CLIENT_DIR and starts allot at ALLOT_URL on the MongoDB database
ALLOT_MONGO_DATABASE at ALLOT_MONGO_URI; ALLOT_BIN is the allot binary, used
for `allot users create-admin`. Any failed expectation exits non-zero.
"""

import datetime
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.environ["ALLOT_CLIENT_DIR"])

from allot_client import AuthenticatedClient, Client  # noqa: E402
from allot_client.api.allocations import (  # noqa: E402
    allocate,
    list_backorders,
    order_allocations,
)
from allot_client.api.batches import (  # noqa: E402
    add_batch,
    batch_allocations,
    change_batch_quantity,
    get_batch,
    list_batches,
)
from allot_client.api.accounts import create_user, list_users, update_user  # noqa: E402
from allot_client.api.events import read_events  # noqa: E402
from allot_client.api.users import (  # noqa: E402
    change_password,
    login,
    logout,
    me,
    refresh,
    register,
)
from allot_client.models import (  # noqa: E402
    AccountPage,
    AccountUpdate,
    Allocated,
    AuthErrorBody,
    BackorderPage,
    BatchAllocationPage,
    BatchBody,
    BatchPage,
    Credentials,
    ErrorBody,
    EventPage,
    EventTypeName,
    LineStatusBody,
    LogoutBody,
    NewAccount,
    NewBatch,
    OrderLineRequest,
    PasswordChange,
    Profile,
    QuantityChangeBody,
    QuantityUpdate,
    RoleName,
    TokenPairBody,
)

URL = os.environ["ALLOT_URL"]
PASSWORD = "correct horse battery"


def name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def step(text: str) -> None:
    print(f"- {text}", flush=True)


def expect(value, kind):
    """The parsed body, which must be of the given generated type."""
    assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
    return value


def as_bearer(token: str) -> AuthenticatedClient:
    return AuthenticatedClient(base_url=URL, token=token, raise_on_unexpected_status=True)


anonymous = Client(base_url=URL, raise_on_unexpected_status=True)

alice = name("alice")
step(f"register {alice}")
registered = expect(
    register.sync(client=anonymous, body=Credentials(username=alice, password=PASSWORD)),
    TokenPairBody,
)
assert registered.token_type == "bearer" and registered.expires_in > 0

step(f"log in as {alice}")
tokens = expect(
    login.sync(client=anonymous, body=Credentials(username=alice, password=PASSWORD)),
    TokenPairBody,
)
user = as_bearer(tokens.access_token)
profile = expect(me.sync(client=user), Profile)
assert profile.username == alice and profile.roles == ["user"], profile

admin_name = name("admin")
step(f"create admin {admin_name} with `allot users create-admin`")
cli_env = {key: value for key, value in os.environ.items() if not key.startswith("ALLOT")}
cli_env.update(
    ALLOT_ENV="testing",
    ALLOT__MONGO__URI=os.environ["ALLOT_MONGO_URI"],
    ALLOT__MONGO__DATABASE=os.environ["ALLOT_MONGO_DATABASE"],
    ALLOT_ADMIN_PASSWORD=PASSWORD,
)
created = subprocess.run(
    [os.environ["ALLOT_BIN"], "users", "create-admin", "--username", admin_name],
    env=cli_env,
    capture_output=True,
    text=True,
    timeout=60,
)
assert created.returncode == 0, created.stderr
assert f"created admin {admin_name}" in created.stdout, created.stdout
admin_tokens = expect(
    login.sync(client=anonymous, body=Credentials(username=admin_name, password=PASSWORD)),
    TokenPairBody,
)
admin = as_bearer(admin_tokens.access_token)
assert "admin" in expect(me.sync(client=admin), Profile).roles

sku = name("LAMP").upper()
in_stock, shipment = name("batch"), name("batch")
step(f"add batches {in_stock} (in the warehouse) and {shipment} (arriving) of {sku}")
arrival = datetime.date.today() + datetime.timedelta(days=14)
added = expect(
    add_batch.sync(
        client=admin,
        body=NewBatch(reference=in_stock, sku=sku, purchased_quantity=10, eta=None),
    ),
    BatchBody,
)
assert added.available_quantity == 10 and added.eta is None, added
added = expect(
    add_batch.sync(
        client=admin,
        body=NewBatch(reference=shipment, sku=sku, purchased_quantity=5, eta=arrival),
    ),
    BatchBody,
)
assert added.eta == arrival, added
refused = add_batch.sync_detailed(
    client=user, body=NewBatch(reference=name("batch"), sku=sku, purchased_quantity=1)
)
assert refused.status_code == 403, refused
assert expect(refused.parsed, AuthErrorBody).msg == "Admin role required"

order = name("order")
step(f"allocate {order}: warehouse stock first")
allocated = expect(
    allocate.sync(client=user, body=OrderLineRequest(orderid=order, sku=sku, qty=8)), Allocated
)
assert allocated.batchref == in_stock, allocated
allocated = expect(
    allocate.sync(
        client=user, body=OrderLineRequest(orderid=name("order"), sku=sku, qty=4)
    ),
    Allocated,
)
assert allocated.batchref == shipment, allocated

step("the admin follows the event feed: both allocations, in order")
seen, after = [], 0
for _ in range(40):
    page = expect(
        read_events.sync(
            client=admin, after=after, types=[EventTypeName.LINE_ALLOCATED], wait_ms=500
        ),
        EventPage,
    )
    seen += [(event.data.orderid, event.data.batchref) for event in page.events]
    after = page.next_after
    if len(seen) >= 2:
        break
assert [batch for _, batch in seen] == [in_stock, shipment], seen
assert seen[0][0] == order, seen

step(f"read the allocations of {order} and the stock")
lines = order_allocations.sync(client=user, orderid=order)
assert isinstance(lines, list) and len(lines) == 1, lines
assert (lines[0].sku, lines[0].batchref, lines[0].qty) == (sku, in_stock, 8), lines
batch = expect(get_batch.sync(client=user, reference=in_stock), BatchBody)
assert (batch.available_quantity, batch.allocated_quantity) == (2, 8), batch
drawing = expect(
    batch_allocations.sync(client=admin, reference=in_stock), BatchAllocationPage
)
assert [line.orderid for line in drawing.allocations] == [order], drawing
page = expect(list_batches.sync(client=user, sku=sku, limit=1), BatchPage)
assert [b.reference for b in page.batches] == sorted([in_stock, shipment])[:1], page
page = expect(
    list_batches.sync(client=user, sku=sku, limit=1, cursor=page.next_cursor), BatchPage
)
assert [b.reference for b in page.batches] == sorted([in_stock, shipment])[1:], page

step("allocate more than is left: a typed 400")
out_of_stock = allocate.sync_detailed(
    client=user, body=OrderLineRequest(orderid=name("order"), sku=sku, qty=50)
)
assert out_of_stock.status_code == 400, out_of_stock
assert expect(out_of_stock.parsed, ErrorBody).message == f"Out of stock for sku {sku}"

step(f"the warehouse batch is lost: {order} waits as a backorder, then takes new stock")
change = expect(
    change_batch_quantity.sync(
        client=admin, reference=in_stock, body=QuantityUpdate(purchased_quantity=0)
    ),
    QuantityChangeBody,
)
assert [line.orderid for line in change.backordered] == [order], change
lines = order_allocations.sync(client=user, orderid=order)
assert isinstance(lines, list), lines
assert (lines[0].status, lines[0].batchref) == (LineStatusBody.BACKORDERED, None), lines
waiting = expect(list_backorders.sync(client=admin, sku=sku), BackorderPage)
assert [line.orderid for line in waiting.backorders] == [order], waiting
restock = name("batch")
expect(
    add_batch.sync(
        client=admin,
        body=NewBatch(reference=restock, sku=sku, purchased_quantity=10, eta=arrival),
    ),
    BatchBody,
)
lines = order_allocations.sync(client=user, orderid=order)
assert isinstance(lines, list), lines
assert (lines[0].status, lines[0].batchref) == (LineStatusBody.ALLOCATED, restock), lines

step("refresh the tokens")
renewed = expect(refresh.sync(client=as_bearer(tokens.refresh_token)), TokenPairBody)
assert expect(me.sync(client=as_bearer(renewed.access_token)), Profile).username == alice

step("log out: the refresh token ends the whole login")
logged_out = expect(logout.sync(client=as_bearer(renewed.refresh_token)), LogoutBody)
assert logged_out.revoked == "login", logged_out
after = me.sync_detailed(client=as_bearer(renewed.access_token))
assert after.status_code == 401, after
assert expect(after.parsed, AuthErrorBody).msg == "Token has been revoked"

bob = name("bob")
step(f"the admin creates {bob}; {bob} cannot see {alice}'s order (404, not 403)")
created = expect(
    create_user.sync(
        client=admin, body=NewAccount(username=bob, password=PASSWORD, roles=[RoleName.USER])
    ),
    Profile,
)
assert created.roles == ["user"] and created.disabled is False, created
accounts = expect(list_users.sync(client=admin, limit=200), AccountPage)
assert {alice, bob, admin_name} <= {u.username for u in accounts.users}, accounts
bob_tokens = expect(
    login.sync(client=anonymous, body=Credentials(username=bob, password=PASSWORD)),
    TokenPairBody,
)
as_bob = as_bearer(bob_tokens.access_token)
hidden = order_allocations.sync_detailed(client=as_bob, orderid=order)
assert hidden.status_code == 404, hidden
taken = allocate.sync_detailed(client=as_bob, body=OrderLineRequest(orderid=order, sku=sku, qty=1))
assert taken.status_code == 404, taken

step(f"the admin disables {bob}: his token is revoked and his login is 403")
expect(update_user.sync(client=admin, username=bob, body=AccountUpdate(disabled=True)), Profile)
assert me.sync_detailed(client=as_bob).status_code == 401
disabled = login.sync_detailed(
    client=anonymous, body=Credentials(username=bob, password=PASSWORD)
)
assert disabled.status_code == 403, disabled
assert expect(disabled.parsed, AuthErrorBody).msg == "Account disabled"

step("five wrong passwords: the sixth attempt waits (429 with Retry-After)")
for _ in range(5):
    wrong = login.sync_detailed(
        client=anonymous, body=Credentials(username=alice, password="not my password")
    )
    assert wrong.status_code == 401, wrong
    assert wrong.headers["www-authenticate"] == "Bearer", wrong.headers
throttled = login.sync_detailed(
    client=anonymous, body=Credentials(username=alice, password=PASSWORD)
)
assert throttled.status_code == 429, throttled
assert int(throttled.headers["retry-after"]) >= 1, throttled.headers
assert isinstance(expect(throttled.parsed, AuthErrorBody).msg, str)

step(f"{alice} changes her password: her old tokens are refused, the new pair works")
time.sleep(float(throttled.headers["retry-after"]) + 0.1)  # the check is throttled too
current = as_bearer(registered.access_token)
changed = expect(
    change_password.sync(
        client=current,
        body=PasswordChange(current_password=PASSWORD, new_password="a new password"),
    ),
    TokenPairBody,
)
assert me.sync_detailed(client=current).status_code == 401
assert expect(me.sync(client=as_bearer(changed.access_token)), Profile).username == alice

print("the story went as told", flush=True)
