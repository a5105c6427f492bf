/**
 * The client against a real `run.py serve` (test/backend.ts): signed calls, the backend's errors
 * as typed results, a task started and waited for, a wait aborted, a 429 honoured.
 *
 * Two backends: `main` runs tasks (against localstripe); `idle` runs none (TASK_CONCURRENCY=0)
 * and lets an account have one unfinished task (TASK_MAX_PENDING=1), so that a task there stays
 * queued as long as a test needs and a second start answers 429, with no race.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createClient, modeOf, parseRetryAfter, type RetryInfo, type Task } from "stripe-app-backend-client";
import {
  addCustomers,
  APP_SECRET,
  customerCount,
  fakeSigner,
  freePort,
  OTHER_SECRET,
  sendWebhook,
  startBackend,
  startEmulator,
  userContext,
  type Backend,
  type Emulator,
} from "./backend.js";

let emulator: Emulator;
let main: Backend;
let idle: Backend;

before(async () => {
  emulator = await startEmulator();
  [main, idle] = await Promise.all([
    startBackend({ STRIPE_API_BASE: emulator.url }),
    startBackend({ STRIPE_API_BASE: emulator.url, TASK_CONCURRENCY: "0", TASK_MAX_PENDING: "1" }),
  ]);
  await Promise.all([main.install("acct_installed"), idle.install("acct_idle"), idle.install("acct_busy")]);
});

after(async () => {
  await Promise.all([main?.stop(), idle?.stop()]);
  await emulator?.stop();
});

function client(backend: Backend, account: string, options: { secret?: string; roles?: string[]; seen?: unknown[] } = {}) {
  const user = userContext(account, options.roles);
  return createClient({
    baseUrl: backend.url,
    fetchStripeSignature: fakeSigner(options.secret ?? APP_SECRET, user, options.seen),
    userContext: user,
  });
}

describe("signed calls", () => {
  test("a signed call answers the account's data; the body is {...payload, user_id, account_id}", async () => {
    const bodies: string[] = [];
    const user = userContext("acct_installed");
    const api = createClient({
      baseUrl: main.url + "/", // a trailing slash is dropped
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: user,
      fetch: async (input, init) => {
        bodies.push(String(init?.body));
        return fetch(input, init);
      },
    });
    const { data, error } = await api.installation();
    assert.equal(error, undefined);
    assert.equal(data?.account_id, "acct_installed");
    assert.equal(data?.test.active, true);
    assert.equal(data?.live.active, false);

    const who = await api.post("/api/whoami", {});
    assert.deepEqual(who.data?.signed_fields.sort(), ["account_id", "user_id"]);
    assert.equal(who.data?.user_id, "usr_test1");

    await api.tasks.status("task_" + "0".repeat(32));
    assert.deepEqual(bodies, [
      '{"user_id":"usr_test1","account_id":"acct_installed"}',
      '{"user_id":"usr_test1","account_id":"acct_installed"}',
      `{"task_id":"task_${"0".repeat(32)}","user_id":"usr_test1","account_id":"acct_installed"}`,
    ]);
  });

  test("jobs() lists the account's jobs in its mode", async () => {
    const { data, error } = await client(main, "acct_installed").jobs();
    assert.equal(error, undefined);
    assert.equal(data?.account_id, "acct_installed");
    assert.ok(data && data.jobs.length > 0 && data.jobs.every((j) => j.mode === "test"), JSON.stringify(data));
  });

  test("whoami() says what the signature proved", async () => {
    const api = client(main, "acct_installed", { roles: ["admin"] });
    const { data } = await api.whoami();
    assert.equal(data?.account_id, "acct_installed");
    assert.deepEqual(data?.modes, ["test"]);
    // a payload field is covered by the signature only if the body is exactly what was signed
    const withRoles = await api.post("/api/whoami", { stripe_roles: [{ id: "admin" }] });
    assert.deepEqual(withRoles.data?.signed_fields.sort(), ["account_id", "stripe_roles", "user_id"]);
    assert.deepEqual(withRoles.data?.roles, ["admin"]);
  });
});

describe("sandboxes and organizations", () => {
  const ORG = "org_6SD3oI0eSQemPzdmaGLJ5j6";

  test("installation() sends the account's org_id and has every mode, each with its context", async () => {
    const bodies: string[] = [];
    const plain = userContext("acct_installed");
    const user = { ...plain, account: { ...plain.account, org_id: ORG } };
    const api = createClient({
      baseUrl: main.url,
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: user,
      fetch: async (input, init) => {
        bodies.push(String(init?.body));
        return fetch(input, init);
      },
    });
    const { data, error } = await api.installation();
    assert.equal(error, undefined, JSON.stringify(error));
    assert.deepEqual(bodies, [`{"org_id":"${ORG}","user_id":"usr_test1","account_id":"acct_installed"}`]);
    assert.equal(data?.org_id, ORG);
    assert.equal(data?.test.active, true);
    assert.equal(data?.test.context, null);
    assert.deepEqual(data?.sandbox, { active: false, since: null, context: null });
    // no organization (the SDK's org_id null): none sent, none answered
    const none = { ...plain, account: { ...plain.account, org_id: null } };
    const alone = createClient({ baseUrl: main.url, fetchStripeSignature: fakeSigner(APP_SECRET, none), userContext: none });
    const answer = await alone.installation();
    assert.equal(answer.error, undefined);
    assert.equal(answer.data && "org_id" in answer.data, false);
  });

  test("a malformed org_id is the backend's 400, as a result", async () => {
    const plain = userContext("acct_installed");
    const user = { ...plain, account: { ...plain.account, org_id: "org_not an id" } };
    const api = createClient({ baseUrl: main.url, fetchStripeSignature: fakeSigner(APP_SECRET, user), userContext: user });
    const { error } = await api.installation();
    assert.equal(error?.status, 400);
    assert.match(error?.message ?? "", /org_id/);
  });

  test("an event's context shows as the mode's context", async () => {
    await main.install("acct_orgmember");
    const event = {
      id: "evt_ctx" + Date.now(), object: "event", type: "customer.created", livemode: false,
      created: Math.floor(Date.now() / 1000), account: "acct_orgmember", context: ORG,
      data: { object: { id: "cus_1", object: "customer" } },
    };
    assert.equal(await sendWebhook(main.url, event), 200);
    const api = client(main, "acct_orgmember");
    let context: string | null | undefined;
    for (let i = 0; i < 200 && context !== ORG; i++) {
      context = (await api.installation()).data?.test.context;
      if (context !== ORG) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(context, ORG);
  });

  test("modeOf: sandbox for a sandbox account, else the Dashboard's mode", () => {
    const user = userContext("acct_x");
    assert.equal(modeOf(user, { mode: "test" }), "sandbox");
    const notSandbox = { ...user, account: { ...user.account, isSandbox: false } };
    assert.equal(modeOf(notSandbox, { mode: "live" }), "live");
    assert.equal(modeOf(notSandbox, { mode: "test" }), "test");
    assert.equal(modeOf({ account: { id: "acct_x" } }, { mode: "test" }), "test");
  });
});

describe("errors are results, never throws", () => {
  test("401 when the signature is made with another secret", async () => {
    const { data, error } = await client(main, "acct_installed", { secret: OTHER_SECRET }).installation();
    assert.equal(data, undefined);
    assert.equal(error?.status, 401);
    assert.equal(typeof error?.code, "string");
    assert.ok(error?.message, "the backend's message");
  });

  test("403 not_installed for an account without the app", async () => {
    const { error } = await client(main, "acct_stranger").jobs();
    assert.deepEqual(error, {
      code: "not_installed",
      message: error?.message,
      status: 403,
    });
  });

  test("404 unknown_task for a task the backend does not have", async () => {
    const { error } = await client(main, "acct_installed").tasks.start("no_such_task");
    assert.equal(error?.status, 404);
    assert.equal(error?.code, "unknown_task");
  });

  test("post() fills a path's {placeholders} from params, and says when one is missing", async () => {
    const api = client(main, "acct_installed");
    const filled = await api.post("/api/tasks/{name}", {}, { params: { name: "no_such_task" } });
    assert.equal(filled.error?.code, "unknown_task", "the call reached /api/tasks/no_such_task");
    const missing = await api.post("/api/tasks/{name}", {});
    assert.deepEqual(missing.error, { code: "bad_path", message: "no value for {name} in /api/tasks/{name}", status: 0 });
  });

  test("a backend that cannot be reached is a network_error with status 0", async () => {
    const user = userContext("acct_installed");
    const api = createClient({
      baseUrl: `http://127.0.0.1:${await freePort()}`,
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: user,
    });
    const { error } = await api.installation();
    assert.equal(error?.code, "network_error");
    assert.equal(error?.status, 0);
  });

  test("a failing fetchStripeSignature is signature_failed; a missing user id is no_user", async () => {
    const user = userContext("acct_installed");
    const broken = createClient({
      baseUrl: main.url,
      fetchStripeSignature: async () => {
        throw new Error("no signature in this frame");
      },
      userContext: user,
    });
    assert.equal((await broken.installation()).error?.code, "signature_failed");
    const anonymous = createClient({
      baseUrl: main.url,
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: { account: user.account },
    });
    assert.equal((await anonymous.installation()).error?.code, "no_user");
  });
});

describe("credentials", () => {
  test("set and delete send userContext.roles as stripe_roles; the backend's role rule applies", async () => {
    const seen: unknown[] = [];
    const viewer = client(main, "acct_installed", { roles: ["view_only"], seen });
    const refused = await viewer.credentials.set({ mode: "test", name: "acme_key", value: "s3cret" });
    assert.equal(refused.error?.status, 403);
    assert.equal(refused.error?.code, "role_required");
    assert.deepEqual(seen[0], {
      mode: "test",
      name: "acme_key",
      value: "s3cret",
      stripe_roles: [{ id: "view_only", name: "view_only", type: "builtIn" }],
    });

    const admin = client(main, "acct_installed", { roles: ["admin"] });
    const stored = await admin.credentials.set({ mode: "test", name: "acme_key", value: "s3cret" });
    assert.equal(stored.error, undefined, JSON.stringify(stored.error));
    assert.equal(stored.data?.name, "acme_key");
    const listed = await viewer.credentials.list();
    assert.deepEqual(
      listed.data?.credentials.map((c) => [c.name, c.mode, c.kind]),
      [["acme_key", "test", "secret"]],
    );
    assert.ok(!JSON.stringify(listed.data).includes("s3cret"));
    const deleted = await admin.credentials.delete({ mode: "test", name: "acme_key" });
    assert.equal(deleted.data?.deleted, true);
    assert.deepEqual((await viewer.credentials.list()).data?.credentials, []);
  });
});

describe("single-use signatures", () => {
  test("calls signed within one second with one payload all go through, each signed anew", async () => {
    const seen: unknown[] = [];
    const viewer = client(main, "acct_installed", { seen });
    // credentials/list accepts a signature once. The three calls are signed within a second of
    // each other, so at least two of them share a second, and so a signature: at least one is
    // refused and signed again (more when all three share one).
    const results = await Promise.all([1, 2, 3].map(() => viewer.credentials.list()));
    for (const result of results) assert.equal(result.error, undefined, JSON.stringify(result.error));
    assert.ok(seen.length >= 4, `signed ${seen.length} times: the refused calls were signed again`);
  });
});

describe("tasks", () => {
  test("a task started and waited for to succeeded, its progress reported", async () => {
    await addCustomers(emulator.url, 5);
    const total = await customerCount(emulator.url);
    const api = client(main, "acct_installed");
    const started = await api.tasks.start("sync_customers", { page_size: 2 });
    assert.equal(started.error, undefined, JSON.stringify(started.error));
    assert.equal(started.data?.status, "queued");
    const reports: Task[] = [];
    const done = await api.tasks.wait(started.data!.task_id, {
      minDelay: 20,
      maxDelay: 200,
      onProgress: (task) => reports.push(task),
    });
    assert.equal(done.error, undefined);
    assert.equal(done.data?.status, "succeeded");
    assert.deepEqual(done.data?.result, { count: total, latest: (done.data?.result as { latest: string }).latest });
    assert.equal(done.data?.progress, 1);
    assert.ok(reports.length >= 1, "onProgress was called");
    assert.equal(reports.at(-1)?.status, "succeeded", "the last report is the finished task");
    assert.ok(reports.every((r, i) => i === 0 || JSON.stringify(r) !== JSON.stringify(reports[i - 1])), "only changes");
  });

  test("a wait stops as soon as its signal aborts, even in a long pause between polls", async () => {
    const api = client(idle, "acct_idle");
    const started = await api.tasks.start("sync_customers");
    assert.equal(started.data?.status, "queued", JSON.stringify(started.error));
    const controller = new AbortController();
    const reports: Task[] = [];
    const t0 = Date.now();
    const result = await api.tasks.wait(started.data!.task_id, {
      signal: controller.signal,
      minDelay: 60_000, // the next poll would be a minute away: the abort must cut the pause
      onProgress: (task) => {
        reports.push(task);
        setTimeout(() => controller.abort(), 100);
      },
    });
    assert.equal(result.error?.code, "aborted");
    assert.equal(result.error?.status, 0);
    assert.ok(Date.now() - t0 < 10_000, `stopped after ${Date.now() - t0} ms`);
    assert.deepEqual(reports.map((r) => r.status), ["queued"]);
    await idle.cli(["tasks", "cancel", started.data!.task_id]); // leave acct_idle with none pending
  });

  test("a 429 is honoured: the start waits Retry-After, then succeeds once a slot is free", async () => {
    const retries: RetryInfo[] = [];
    const user = userContext("acct_busy");
    let cancelled: Promise<unknown> | undefined;
    const api = createClient({
      baseUrl: idle.url,
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: user,
      onRetry: (info) => {
        retries.push(info);
        // while the client waits, the first task ends (the operator cancels it): a slot is free
        cancelled = idle.cli(["tasks", "cancel", first.data!.task_id]);
      },
    });
    const first = await api.tasks.start("sync_customers");
    assert.equal(first.data?.status, "queued");

    const impatient = createClient({
      baseUrl: idle.url,
      fetchStripeSignature: fakeSigner(APP_SECRET, user),
      userContext: user,
      retry: { max429: 0 },
    });
    const refused = await impatient.tasks.start("sync_customers");
    assert.deepEqual(refused.error && { status: refused.error.status, retryAfter: refused.error.retryAfter }, {
      status: 429,
      retryAfter: 10,
    });

    const t0 = Date.now();
    const second = await api.tasks.start("sync_customers");
    const waited = Date.now() - t0;
    await cancelled;
    assert.equal(second.error, undefined, JSON.stringify(second.error));
    assert.equal(second.data?.status, "queued");
    assert.deepEqual(retries, [{ path: "/api/tasks/sync_customers", status: 429, retryAfter: 10, attempt: 1 }]);
    // Retry-After: 10 was waited out (less 100 ms for timer and clock granularity): the slot
    // was freed only once the client had started waiting, so an early retry would be a 429 again
    assert.ok(waited >= 9_900, `retried after ${waited} ms, before Retry-After`);
  });
});

test("parseRetryAfter reads seconds and HTTP dates", () => {
  assert.equal(parseRetryAfter("10"), 10);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:30 GMT", now), 30);
});
