/**
 * docs/extension.md shows the code of examples/snippets.ts: this file checks that the document
 * holds every `// doc:start NAME` ... `// doc:end` region of it verbatim, and runs each
 * function against a real backend (test/backend.ts).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { createClient } from "stripe-app-backend-client";
import { describeError, installState, syncCustomers, whereAmI } from "../examples/snippets.js";
import {
  addCustomers,
  APP_SECRET,
  fakeSigner,
  freePort,
  OTHER_SECRET,
  ROOT,
  startBackend,
  startEmulator,
  userContext,
  type Backend,
  type Emulator,
} from "./backend.js";

/** The regions of `source`: name -> text between its markers (without them). */
export function regions(source: string): Map<string, string> {
  const found = new Map<string, string>();
  const re = /^\/\/ doc:start (\S+)\n([\s\S]*?)^\/\/ doc:end$/gm;
  for (const m of source.matchAll(re)) found.set(m[1]!, m[2]!);
  return found;
}

const SNIPPETS = path.join(ROOT, "clients/typescript/examples/snippets.ts");
const DOC = path.join(ROOT, "docs/extension.md");

test("docs/extension.md shows each region of examples/snippets.ts verbatim, in a ts block", () => {
  const found = regions(readFileSync(SNIPPETS, "utf8"));
  assert.deepEqual([...found.keys()], ["import", "five-lines", "modes", "task", "errors"]);
  const doc = readFileSync(DOC, "utf8");
  for (const [name, text] of found) {
    assert.ok(doc.includes("```ts\n" + text + "```"), `docs/extension.md lacks the region ${name}:\n${text}`);
  }
});

let emulator: Emulator;
let backend: Backend;

before(async () => {
  emulator = await startEmulator();
  backend = await startBackend({ STRIPE_API_BASE: emulator.url });
  await backend.install("acct_docs");
  await addCustomers(emulator.url, 3);
});

after(async () => {
  await backend?.stop();
  await emulator?.stop();
});

function api(account: string, secret = APP_SECRET, baseUrl = backend.url) {
  const user = userContext(account);
  return { user, sign: fakeSigner(secret, user), client: createClient({ baseUrl, fetchStripeSignature: fakeSigner(secret, user), userContext: user }) };
}

test("five lines: the installation state, or the error's message", async () => {
  const { user, sign } = api("acct_docs");
  assert.equal(await installState(backend.url, sign, user), "installed in test mode");
  const stranger = api("acct_stranger");
  assert.equal(await installState(backend.url, stranger.sign, stranger.user), "not installed in test mode");
  const forged = api("acct_docs", OTHER_SECRET);
  assert.match(await installState(backend.url, forged.sign, forged.user), /^cannot read the installation: \S/);
});

test("modes: the sandbox told by isSandbox, the organization sent and answered", async () => {
  const { user, client } = api("acct_docs"); // the test helper's account is a sandbox
  assert.equal(await whereAmI(client, user, { mode: "test" }), "sandbox: not installed, calls use Stripe-Account");
  const account = { ...user.account, isSandbox: false, org_id: "org_docs1" };
  const inOrg = { ...user, account };
  const orgClient = createClient({ baseUrl: backend.url, fetchStripeSignature: fakeSigner(APP_SECRET, inOrg), userContext: inOrg });
  assert.equal(
    await whereAmI(orgClient, inOrg, { mode: "test" }),
    "test: installed, calls use Stripe-Account (organization org_docs1)",
  );
  const forged = api("acct_docs", OTHER_SECRET);
  assert.match(await whereAmI(forged.client, forged.user, { mode: "test" }), /^cannot read the installation: \S/);
});

test("a task with progress: every change shown, then the result", async () => {
  const lines: string[] = [];
  await syncCustomers(api("acct_docs").client, (text) => lines.push(text));
  assert.ok(lines.length >= 2, lines.join("\n"));
  assert.match(lines.at(-2)!, /^succeeded 100% \d+ customers$/);
  assert.match(lines.at(-1)!, /^done: \{"count":\d+,"latest":"cus_/);
});

test("a task whose wait is aborted says so", async () => {
  const controller = new AbortController();
  controller.abort();
  const lines: string[] = [];
  await syncCustomers(api("acct_docs").client, (text) => lines.push(text), controller.signal);
  assert.deepEqual(lines, ["stopped waiting"]);
});

test("error handling: each status its message", async () => {
  assert.match(await describeError(api("acct_docs").client), /^\d+ jobs$/);
  assert.equal(await describeError(api("acct_stranger").client), "install the app first");
  assert.equal(
    await describeError(api("acct_docs", OTHER_SECRET).client),
    "the signature was refused: is the app secret the backend's?",
  );
  const gone = api("acct_docs", APP_SECRET, `http://127.0.0.1:${await freePort()}`);
  assert.equal(await describeError(gone.client), "the backend cannot be reached (network_error)");
});
