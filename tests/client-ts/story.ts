// A whole allot story, told through the TypeScript client generated from
// openapi/openapi.yaml (openapi-typescript types + openapi-fetch): what a team
// using the spec alone would write.
//
// Run by tests/api/contract_tools.rs, which generates generated/allot.d.ts,
// type-checks this file (`tsc --noEmit`, strict), compiles it and runs it under
// node against allot at ALLOT_URL on the MongoDB database ALLOT_MONGO_DATABASE
// at ALLOT_MONGO_URI; ALLOT_BIN is the allot binary, used for
// `allot users create-admin` with the configuration in ALLOT_CONFIG_DIR. Any failed expectation exits non-zero.

import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/allot.js";

type Schemas = components["schemas"];

const url = env("ALLOT_URL");
const password = "correct horse battery";

function env(key: string): string {
  const value = process.env[key];
  if (value === undefined) throw new Error(`${key} is not set`);
  return value;
}

const name = (kind: string) => `${kind}-${randomUUID().slice(0, 10)}`;
const step = (text: string) => console.log(`- ${text}`);

/** A client that sends `token` as its bearer token, or none. */
const client = (token?: string) =>
  createClient<paths>({
    baseUrl: url,
    headers: token === undefined ? {} : { Authorization: `Bearer ${token}` },
  });

/** The data of a successful answer; fails with the status and error otherwise. */
function expectData<T>(answer: { data?: T; error?: unknown; response: Response }): T {
  if (answer.data === undefined) {
    throw new Error(`${answer.response.status}: ${JSON.stringify(answer.error)}`);
  }
  return answer.data;
}

/** The text of an error body: API errors carry `message`, token errors `msg`. */
function errorText(error: Schemas["Error"]): string {
  return "message" in error ? error.message : error.msg;
}

const anonymous = client();

const alice = name("alice");
step(`register ${alice}`);
const registered = expectData(
  await anonymous.POST("/users/registration", { body: { username: alice, password } }),
);
ok(registered.token_type === "bearer" && registered.expires_in > 0, JSON.stringify(registered));

step(`log in as ${alice}`);
const tokens = expectData(
  await anonymous.POST("/users/login", { body: { username: alice, password } }),
);
const user = client(tokens.access_token);
const profile = expectData(await user.GET("/users/me"));
strictEqual(profile.username, alice);
deepStrictEqual(profile.roles, ["user"]);

const adminName = name("admin");
step(`create admin ${adminName} with \`allot users create-admin\``);
const cliEnv = Object.fromEntries(
  Object.entries(process.env).filter(([key]) => !key.startsWith("ALLOT")),
);
const created = spawnSync(env("ALLOT_BIN"), ["users", "create-admin", "--username", adminName], {
  env: {
    ...cliEnv,
    ALLOT_ENV: "testing",
    ALLOT_CONFIG_DIR: env("ALLOT_CONFIG_DIR"),
    ALLOT__MONGO__URI: env("ALLOT_MONGO_URI"),
    ALLOT__MONGO__DATABASE: env("ALLOT_MONGO_DATABASE"),
    ALLOT_ADMIN_PASSWORD: password,
  },
  encoding: "utf8",
  timeout: 60_000,
});
strictEqual(created.status, 0, created.stderr);
ok(created.stdout.includes(`created admin ${adminName}`), created.stdout);
const adminTokens = expectData(
  await anonymous.POST("/users/login", { body: { username: adminName, password } }),
);
const admin = client(adminTokens.access_token);
ok(expectData(await admin.GET("/users/me")).roles.includes("admin"));

const sku = name("LAMP").toUpperCase();
const inStock = name("batch");
const shipment = name("batch");
step(`add batches ${inStock} (in the warehouse) and ${shipment} (arriving) of ${sku}`);
const arrival = new Date(Date.now() + 14 * 24 * 3600 * 1000).toISOString().slice(0, 10);
let batch: Schemas["BatchBody"] = expectData(
  await admin.POST("/batches", { body: { reference: inStock, sku, purchased_quantity: 10 } }),
);
strictEqual(batch.available_quantity, 10);
strictEqual(batch.eta, null);
batch = expectData(
  await admin.POST("/batches", {
    body: { reference: shipment, sku, purchased_quantity: 5, eta: arrival },
  }),
);
strictEqual(batch.eta, arrival);
const refused = await user.POST("/batches", {
  body: { reference: name("batch"), sku, purchased_quantity: 1 },
});
strictEqual(refused.response.status, 403);
ok(refused.error !== undefined);
strictEqual(errorText(refused.error), "Admin role required");

const order = name("order");
step(`allocate ${order}: warehouse stock first`);
let allocated = await user.POST("/allocate", { body: { orderid: order, sku, qty: 8 } });
strictEqual(allocated.response.status, 201);
deepStrictEqual(expectData(allocated), { batchref: inStock });
allocated = await user.POST("/allocate", { body: { orderid: name("order"), sku, qty: 4 } });
deepStrictEqual(expectData(allocated), { batchref: shipment });

step("the admin follows the event feed: both allocations, in order");
const seen: (string | undefined)[][] = [];
for (let after = 0, tries = 0; seen.length < 2 && tries < 40; tries++) {
  const page = expectData(
    await admin.GET("/events", {
      params: { query: { after, types: ["line.allocated"], wait_ms: 500 } },
    }),
  );
  seen.push(...page.events.map((event) => [event.data.orderid, event.data.batchref]));
  after = page.next_after;
}
deepStrictEqual(seen.map(([, batch]) => batch), [inStock, shipment]);
strictEqual(seen[0]?.[0], order);

step(`read the allocations of ${order} and the stock`);
let lines = expectData(
  await user.GET("/allocations/{orderid}", { params: { path: { orderid: order } } }),
);
deepStrictEqual(lines, [{ sku, qty: 8, batchref: inStock, status: "allocated" }]);
batch = expectData(
  await user.GET("/batches/{reference}", { params: { path: { reference: inStock } } }),
);
deepStrictEqual([batch.available_quantity, batch.allocated_quantity], [2, 8]);
const drawing = expectData(
  await admin.GET("/batches/{reference}/allocations", {
    params: { path: { reference: inStock } },
  }),
);
deepStrictEqual(
  drawing.allocations.map((line) => line.orderid),
  [order],
);
const references = [inStock, shipment].sort();
let page = expectData(await user.GET("/batches", { params: { query: { sku, limit: 1 } } }));
deepStrictEqual(
  page.batches.map((b) => b.reference),
  references.slice(0, 1),
);
const cursor = page.next_cursor;
ok(cursor !== undefined, "a second page");
page = expectData(await user.GET("/batches", { params: { query: { sku, limit: 1, cursor } } }));
deepStrictEqual(
  page.batches.map((b) => b.reference),
  references.slice(1),
);

step("allocate more than is left: a typed 400");
const outOfStock = await user.POST("/allocate", {
  body: { orderid: name("order"), sku, qty: 50 },
});
strictEqual(outOfStock.response.status, 400);
ok(outOfStock.error !== undefined);
strictEqual(errorText(outOfStock.error), `Out of stock for sku ${sku}`);

step(`the warehouse batch is lost: ${order} waits as a backorder, then takes new stock`);
const change = expectData(
  await admin.PATCH("/batches/{reference}", {
    params: { path: { reference: inStock } },
    body: { purchased_quantity: 0 },
  }),
);
deepStrictEqual(
  change.backordered.map((line) => line.orderid),
  [order],
);
lines = expectData(
  await user.GET("/allocations/{orderid}", { params: { path: { orderid: order } } }),
);
deepStrictEqual(lines, [{ sku, qty: 8, batchref: null, status: "backordered" }]);
const waiting = expectData(await admin.GET("/backorders", { params: { query: { sku } } }));
deepStrictEqual(
  waiting.backorders.map((line) => line.orderid),
  [order],
);
const restock = name("batch");
expectData(
  await admin.POST("/batches", {
    body: { reference: restock, sku, purchased_quantity: 10, eta: arrival },
  }),
);
lines = expectData(
  await user.GET("/allocations/{orderid}", { params: { path: { orderid: order } } }),
);
deepStrictEqual(lines, [{ sku, qty: 8, batchref: restock, status: "allocated" }]);

step("refresh the tokens");
const renewed = expectData(await client(tokens.refresh_token).POST("/users/refresh"));
strictEqual(expectData(await client(renewed.access_token).GET("/users/me")).username, alice);

step("log out: the refresh token ends the whole login");
const loggedOut = expectData(await client(renewed.refresh_token).POST("/users/logout"));
strictEqual(loggedOut.revoked, "login");
const after = await client(renewed.access_token).GET("/users/me");
strictEqual(after.response.status, 401);
ok(after.error !== undefined);
strictEqual(errorText(after.error), "Token has been revoked");

console.log("the story went as told");
