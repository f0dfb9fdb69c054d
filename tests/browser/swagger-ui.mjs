// Drives the Swagger UI at <base-url>/docs in headless Debian chromium, as a person would:
// every tag is listed; GET /tests/hello through "Try it out" -> "Execute" shows World!;
// after "Authorize" with the bearer token, GET /users/me shows the user's profile, and
// its documented 503 and 404 show examples of their own messages.
//
//   node tests/browser/swagger-ui.mjs <base-url> <access-token> <username> <screenshot-path>
//
// Exits 0 when every check passes. On failure it prints what went wrong and what the
// page showed, saves a screenshot (<screenshot-path> with "-failure" before the
// extension) and exits 1. Run by tests/api/browser.rs; scripts/setup-browser installs
// chromium and node_modules. CHROMIUM overrides /usr/bin/chromium.

import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

const TAGS = ["health", "tests", "users", "batches", "allocations"];
const STEP_TIMEOUT_MS = 15_000;
const NAVIGATION_TIMEOUT_MS = 30_000;
const OVERALL_TIMEOUT_MS = 120_000;
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--disable-default-apps",
  "--disable-extensions",
  "--no-first-run",
  "--no-default-browser-check",
  "--mute-audio",
];

const [baseUrl, token, username, screenshotPath] = process.argv.slice(2);
if (!baseUrl || !token || !username || !screenshotPath) {
  console.error(
    "usage: node tests/browser/swagger-ui.mjs <base-url> <access-token> <username> <screenshot-path>",
  );
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`${executablePath} is missing: run scripts/setup-browser`);
  process.exit(1);
}

const started = Date.now();
let step = "starting";
const log = (message) =>
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${message}`);
const consoleLines = [];
const failedRequests = []; // and those answered 4xx/5xx

// A hung browser must not hang the test run.
const watchdog = setTimeout(() => {
  console.error(`gave up after ${OVERALL_TIMEOUT_MS / 1000} s, during: ${step}`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

let browser;
let page;
try {
  step = `launching ${executablePath}`;
  log(step);
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: NAVIGATION_TIMEOUT_MS,
  });
  log(`chromium ${browser.version()}`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(NAVIGATION_TIMEOUT_MS);
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) {
      failedRequests.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
    }
  });
  page.on("requestfailed", (request) =>
    failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
  );

  step = "opening /docs";
  log(step);
  const response = await page.goto(`${baseUrl}/docs`, { waitUntil: "load" });
  if (!response || response.status() !== 200) {
    throw new Error(`GET /docs answered ${response ? response.status() : "nothing"}`);
  }
  await page.locator(".swagger-ui .information-container .title").waitFor();
  await page.locator(".opblock-tag-section").first().waitFor();

  step = "checking that every tag is listed";
  log(step);
  const shownTags = (await page.locator(".opblock-tag").evaluateAll((tags) =>
    tags.map((tag) => tag.getAttribute("data-tag")),
  )).filter(Boolean);
  const missingTags = TAGS.filter((tag) => !shownTags.includes(tag));
  if (missingTags.length > 0) {
    throw new Error(`tags missing: ${missingTags.join(", ")} (shown: ${shownTags.join(", ")})`);
  }
  log(`tags shown: ${shownTags.join(", ")}`);

  step = "GET /tests/hello through Try it out";
  log(step);
  await tryItOut(page, "get", "/tests/hello", "World!");

  step = "authorizing with the bearer token";
  log(step);
  await page.locator(".auth-wrapper .btn.authorize").click();
  const dialog = page.locator(".dialog-ux .modal-ux");
  await dialog.waitFor();
  const scheme = dialog.locator(".auth-container").filter({ hasText: "bearerAuth" });
  await scheme.locator("input").first().fill(token);
  await scheme.locator("button.authorize").click();
  // Once authorized the scheme offers "Logout" instead of "Authorize".
  await scheme.locator("button", { hasText: "Logout" }).waitFor();
  await dialog.locator("button.btn-done").click();
  await dialog.waitFor({ state: "detached" });
  await page.locator(".auth-wrapper .btn.authorize.locked").waitFor();

  step = "GET /users/me through Try it out";
  log(step);
  const me = await tryItOut(page, "get", "/users/me", username);
  if (!me.curl.includes(`Bearer ${token}`)) {
    throw new Error(`the request was sent without the bearer token: ${me.curl}`);
  }

  step = "reading the documented error examples of GET /users/me";
  log(step);
  for (const [code, example] of [
    ["503", "The database is unavailable; retry later"],
    ["404", "no longer exists"],
  ]) {
    const row = me.operation.locator(`.responses-table tr.response[data-code="${code}"]`).first();
    const shown = await row.innerText();
    if (!shown.includes(example)) {
      throw new Error(`the documented ${code} shows no ${JSON.stringify(example)}: ${oneLine(shown)}`);
    }
    log(`documented ${code} shows ${JSON.stringify(example)}`);
  }

  step = `saving the screenshot to ${screenshotPath}`;
  log(step);
  mkdirSync(dirname(screenshotPath), { recursive: true });
  // The whole page down to the operations' end: the schema list below adds nothing.
  const height = await page.evaluate(() => {
    const models = document.querySelector(".swagger-ui section.models");
    return models ? Math.ceil(models.getBoundingClientRect().top + window.scrollY) : undefined;
  });
  await page.screenshot({
    path: screenshotPath,
    fullPage: true,
    ...(height ? { clip: { x: 0, y: 0, width: 1280, height } } : {}),
  });
  log("Swagger UI checks passed");
  await browser.close();
  clearTimeout(watchdog);
} catch (error) {
  console.error(`FAILED while ${step}: ${error.message}`);
  await report(page);
  await browser?.close().catch(() => {});
  clearTimeout(watchdog);
  process.exit(1);
}

// Expands the operation, presses "Try it out" then "Execute", waits for the live
// response, checks it is a 200 whose body contains `expected`, and returns what shows.
async function tryItOut(page, method, path, expected) {
  const operation = page
    .locator(`.opblock.opblock-${method}`)
    .filter({ has: page.locator(".opblock-summary-path", { hasText: new RegExp(`^${escape(path)}$`) }) })
    .first();
  await operation.waitFor();
  if (!(await operation.evaluate((node) => node.classList.contains("is-open")))) {
    await operation.locator(".opblock-summary").first().click();
  }
  await operation.locator("button.try-out__btn").click();
  await operation.locator("button.execute").click();
  const live = operation.locator(".live-responses-table .response");
  await live.waitFor();
  const status = (await live.locator(".response-col_status").first().innerText()).trim();
  const body = await live.locator(".response-col_description pre").first().innerText();
  const curl = await operation.locator(".curl-command").first().innerText().catch(() => "");
  log(`${method.toUpperCase()} ${path} -> ${status}: ${oneLine(body)}`);
  if (status !== "200") {
    throw new Error(`${method.toUpperCase()} ${path} showed status ${status}: ${body}`);
  }
  if (!body.includes(expected)) {
    throw new Error(`${method.toUpperCase()} ${path} showed no ${JSON.stringify(expected)}: ${body}`);
  }
  return { status, body, curl, operation };
}

// Prints what the page showed, to make a failure say why.
async function report(page) {
  if (consoleLines.length > 0) {
    console.error(`browser console:\n  ${consoleLines.join("\n  ")}`);
  }
  if (failedRequests.length > 0) {
    console.error(`failed or refused requests:\n  ${failedRequests.join("\n  ")}`);
  }
  if (!page) return;
  try {
    console.error(`page: ${page.url()} (title ${JSON.stringify(await page.title())})`);
    const text = await page.locator("body").innerText({ timeout: 5_000 });
    console.error(`page text (first 6000 characters):\n${text.slice(0, 6000)}`);
  } catch (error) {
    console.error(`could not read the page: ${error.message}`);
  }
  try {
    const failurePath = screenshotPath.replace(/(\.png)?$/, "-failure.png");
    mkdirSync(dirname(failurePath), { recursive: true });
    await page.screenshot({ path: failurePath, fullPage: true, timeout: 10_000 });
    console.error(`screenshot of the failure: ${failurePath}`);
  } catch (error) {
    console.error(`could not take a screenshot: ${error.message}`);
  }
}

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function oneLine(text) {
  return text.replace(/\s+/g, " ").trim();
}
