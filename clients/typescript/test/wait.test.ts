/**
 * `tasks.wait`'s timing, against a scripted loopback server (the real backend's status endpoint
 * never answers 429 and cannot be made to hold a status for a chosen number of polls): the
 * delay between polls grows by half while nothing changes and starts again when the task
 * moves; a 429 on a poll is waited out for its `Retry-After`.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { test } from "node:test";
import { createClient, type RetryInfo, type Task } from "stripe-app-backend-client";
import { APP_SECRET, fakeSigner, userContext } from "./backend.js";

const TASK_ID = "task_" + "a".repeat(32);

function task(status: Task["status"], progress: number | null): Task {
  return {
    task_id: TASK_ID, name: "t", mode: "test", status, progress, note: null, result: null,
    error: null, attempts: 1, created: 1, started: 1, finished: null,
  };
}

type Answer = { status: number; body: unknown; headers?: Record<string, string> };

/** A server answering each POST with the next scripted answer; records when each came. */
async function scripted(answers: Answer[]) {
  const times: number[] = [];
  const bodies: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = "";
    req.on("data", (b: Buffer) => (body += b.toString()));
    req.on("end", () => {
      times.push(performance.now());
      bodies.push(body);
      const answer = answers.shift() ?? { status: 500, body: { error: { code: "script", message: "no more" } } };
      res.writeHead(answer.status, { "Content-Type": "application/json", ...answer.headers });
      res.end(JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  const url = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
  return { url, times, bodies, close: () => new Promise<void>((r) => server.close(() => r())) };
}

function clientOf(url: string, retries: RetryInfo[] = []) {
  const user = userContext("acct_x");
  return createClient({
    baseUrl: url,
    fetchStripeSignature: fakeSigner(APP_SECRET, user),
    userContext: user,
    onRetry: (info) => retries.push(info),
  });
}

test("polls back off by half while nothing changes, and start again when the task moves", async () => {
  const ok = (t: Task): Answer => ({ status: 200, body: t });
  const server = await scripted([
    ok(task("running", 0.1)), // change: report, delay 100
    ok(task("running", 0.1)), // same: delay 150
    ok(task("running", 0.1)), // same: delay 225
    ok(task("running", 0.5)), // change: report, delay back to 100
    ok(task("succeeded", 1)),
  ]);
  try {
    const reports: Task[] = [];
    const done = await clientOf(server.url).tasks.wait(TASK_ID, {
      minDelay: 100, maxDelay: 1000, onProgress: (t) => reports.push(t),
    });
    assert.equal(done.data?.status, "succeeded");
    assert.deepEqual(reports.map((t) => [t.status, t.progress]), [["running", 0.1], ["running", 0.5], ["succeeded", 1]]);
    const gaps = server.times.slice(1).map((t, i) => t - server.times[i]!);
    const expected = [100, 150, 225, 100];
    // lower bounds: a loaded machine only makes gaps longer
    gaps.forEach((gap, i) => assert.ok(gap >= expected[i]! - 2, `poll ${i + 2} came after ${gap} ms, before ${expected[i]} ms`));
    assert.deepEqual(JSON.parse(server.bodies[0]!), { task_id: TASK_ID, user_id: "usr_test1", account_id: "acct_x" });
  } finally {
    await server.close();
  }
});

test("a 429 on a poll is waited out for its Retry-After, then polling goes on", async () => {
  const server = await scripted([
    { status: 429, body: { error: { code: "rate_limited", message: "slow down" } }, headers: { "Retry-After": "1" } },
    { status: 200, body: task("succeeded", 1) },
  ]);
  try {
    const retries: RetryInfo[] = [];
    const done = await clientOf(server.url, retries).tasks.wait(TASK_ID, { minDelay: 10 });
    assert.equal(done.data?.status, "succeeded");
    assert.deepEqual(retries, [{ path: "/api/tasks/status", status: 429, retryAfter: 1, attempt: 1 }]);
    assert.ok(server.times[1]! - server.times[0]! >= 990, "the second poll waited Retry-After");
  } finally {
    await server.close();
  }
});

test("a 4xx on a poll ends the wait with that error; a 5xx is retried", async () => {
  const server = await scripted([
    { status: 503, body: { error: { code: "unavailable", message: "database down" } } },
    { status: 404, body: { error: { code: "not_found", message: "no such task" } } },
  ]);
  try {
    const done = await clientOf(server.url).tasks.wait(TASK_ID, { minDelay: 10 });
    assert.deepEqual(done.error, { code: "not_found", message: "no such task", status: 404 });
    assert.equal(server.times.length, 2);
  } finally {
    await server.close();
  }
});
