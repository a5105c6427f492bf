/**
 * The real backend for the client's tests: `python run.py serve` on a free loopback port with a
 * fresh SQLite database in a temporary directory, the `localstripe` emulator as Stripe (started
 * as the project's own tests start it, `python -m cli.emulator`), and a fake
 * `fetchStripeSignature` that signs exactly as Stripe does.
 *
 * The Python is `$PYTHON` (the pytest wrapper sets it), else the repository's `.venv/bin/python`.
 * Every child is killed when its test file ends (`stop`), and dies with this process anyway:
 * its stdin is a pipe from here (`--exit-with-parent` for the emulator; the server gets SIGTERM
 * from `stop`, and the test runner's exit kills what is left through `process.on("exit")`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { FetchStripeSignature, UserContext } from "stripe-app-backend-client";

/** The repository (this file runs from clients/typescript/dist/test/). */
export const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
export const PYTHON =
  process.env.PYTHON ??
  (existsSync(path.join(ROOT, ".venv/bin/python")) ? path.join(ROOT, ".venv/bin/python") : "python3");

export const APP_SECRET = "absec_test" + "a".repeat(24);
export const OTHER_SECRET = "absec_test" + "b".repeat(24);
export const WH_TEST = "whsec_test" + "e".repeat(24);
export const WH_LIVE = "whsec_live" + "c".repeat(24);

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** A Fernet key (urlsafe base64 of 32 bytes, padded), for `CREDENTIALS_KEYS`. */
export function fernetKey(): string {
  return randomBytes(32).toString("base64").replace(/\+/g, "-").replace(/\//g, "_");
}

/** `fetchStripeSignature` as Stripe answers it: HMAC-SHA256 with the app secret over
 * `"<t>." + JSON.stringify({...payload, user_id, account_id})`, as `t=<t>,v1=<hex>`. Each
 * payload it was asked to sign is pushed to `seen`. */
export function fakeSigner(
  secret: string,
  user: UserContext,
  seen: unknown[] = [],
): FetchStripeSignature {
  return async (payload = {}) => {
    seen.push(payload);
    const t = Math.floor(Date.now() / 1000);
    const signed = JSON.stringify({ ...payload, user_id: user.id, account_id: user.account.id });
    const v1 = createHmac("sha256", secret).update(`${t}.${signed}`).digest("hex");
    return `t=${t},v1=${v1}`;
  };
}

/** A user context shaped as the SDK's (`ExtensionContextValue["userContext"]`). */
export function userContext(account: string, roles: string[] = []): UserContext {
  const context = {
    id: "usr_test1",
    name: "Test User",
    locale: "en",
    account: { id: account, country: "US", isSandbox: true, name: null },
    roles: roles.map((id) => ({ id, name: id, type: "builtIn" as const })),
  };
  return context;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `python <args>` in the repository with `env` added; resolves when it exits. */
export function python(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, args, { cwd: ROOT, env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

export interface Emulator {
  url: string;
  stop(): Promise<void>;
}

/** localstripe on a free port, its data in memory only (`python -m cli.emulator --port 0`). */
export function startEmulator(): Promise<Emulator> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, ["-m", "cli.emulator", "--port", "0", "--exit-with-parent"], {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "ignore"],
    });
    children.add(child);
    let first = "";
    const onData = (b: Buffer) => {
      first += b.toString();
      const line = first.split("\n")[0];
      if (first.includes("\n") && line) {
        child.stdout?.off("data", onData);
        const url = `http://127.0.0.1:${line.trim()}`;
        waitFor(async () => (await fetch(`${url}/v1/customers`, { headers: auth() })).status < 500, 20_000).then(
          // closing its stdin ends it (`--exit-with-parent`), as the project's tests do
          () => resolve({ url, stop: () => stop(child, () => child.stdin?.end()) }),
          reject,
        );
      }
    };
    child.stdout?.on("data", onData);
    child.on("error", reject);
    child.on("exit", (code) => code !== null && !first && reject(new Error(`the emulator exited (${code})`)));
  });
}

function auth(): Record<string, string> {
  return { Authorization: "Bearer sk_test_platformkey" };
}

/** Create `n` customers in the emulator (the example task counts them). */
export async function addCustomers(emulatorUrl: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const resp = await fetch(`${emulatorUrl}/v1/customers`, {
      method: "POST",
      headers: { ...auth(), "Content-Type": "application/x-www-form-urlencoded" },
      body: `email=c${i}%40example.com`,
    });
    if (!resp.ok) throw new Error(`localstripe refused a customer: ${resp.status}`);
  }
}

/** How many customers the emulator holds (it is shared by the tests of one file). */
export async function customerCount(emulatorUrl: string): Promise<number> {
  let count = 0;
  let after = "";
  for (;;) {
    const resp = await fetch(`${emulatorUrl}/v1/customers?limit=100${after ? `&starting_after=${after}` : ""}`, {
      headers: auth(),
    });
    const page = (await resp.json()) as { data: { id: string }[]; has_more: boolean };
    count += page.data.length;
    const last = page.data[page.data.length - 1];
    if (!page.has_more || !last) return count;
    after = last.id;
  }
}

export async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function stop(child: ChildProcess, ask: () => void = () => child.kill("SIGTERM")): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => {
      clearTimeout(timer);
      children.delete(child);
      resolve();
    });
    ask();
  });
}

/** Deliver `event` to the backend's `/webhooks`, signed as Stripe signs with `secret` (the
 * test endpoint's by default); resolves to the answer's status. */
export async function sendWebhook(url: string, event: object, secret: string = WH_TEST): Promise<number> {
  const body = JSON.stringify(event);
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  const resp = await fetch(`${url}/webhooks`, {
    method: "POST",
    headers: { "Stripe-Signature": `t=${t},v1=${v1}`, "Content-Type": "application/json" },
    body,
  });
  await resp.text();
  return resp.status;
}

export interface Backend {
  url: string;
  env: Record<string, string>;
  /** `python run.py <args>` against this backend's configuration and database. */
  cli(args: string[]): Promise<Run>;
  /** Install the app on `account` in test mode: the signed `account.application.authorized`
   * webhook, sent by the project's own `run.py simulate event`, then wait until it is active. */
  install(account: string): Promise<void>;
  stop(): Promise<void>;
}

/** `python run.py serve` with a fresh database, `extra` over the defaults. */
export async function startBackend(extra: Record<string, string> = {}): Promise<Backend> {
  const dir = mkdtempSync(path.join(tmpdir(), "ts-client-"));
  const port = await freePort();
  const env: Record<string, string> = {
    HOST: "127.0.0.1",
    PORT: String(port),
    DATABASE_URL: `sqlite:///${dir}/app.db`,
    STRIPE_APP_SECRETS: APP_SECRET,
    STRIPE_WEBHOOK_SECRETS_TEST: WH_TEST,
    STRIPE_WEBHOOK_SECRETS_LIVE: WH_LIVE,
    STRIPE_SECRET_KEY_TEST: "sk_test_platformkey",
    CREDENTIALS_KEYS: fernetKey(),
    SCHEDULER: "off",
    SHUTDOWN_TIMEOUT: "5",
    ...extra,
  };
  const child = spawn(PYTHON, ["run.py", "serve"], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  children.add(child);
  let log = "";
  child.stderr?.on("data", (b: Buffer) => {
    log = (log + b.toString()).slice(-4000);
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error("exited");
      return (await fetch(`${url}/healthz`)).status === 200;
    }, 30_000, "the backend's /healthz");
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`the backend did not start: ${String(err)}\n${log}`);
  }
  const cli = (args: string[]) => python(["run.py", ...args], env);
  return {
    url,
    env,
    cli,
    async install(account: string) {
      const run = await cli(["simulate", "--url", url, "event", "account.application.authorized", "--account", account, "--test"]);
      if (run.code !== 0) throw new Error(`simulate failed (${run.code}): ${run.stdout}${run.stderr}`);
      const body = JSON.stringify({ user_id: "usr_test1", account_id: account });
      const sign = fakeSigner(APP_SECRET, { id: "usr_test1", account: { id: account } });
      await waitFor(async () => {
        const resp = await fetch(`${url}/api/installation`, {
          method: "POST",
          headers: { "Stripe-Signature": await sign({}), "Content-Type": "application/json" },
          body,
        });
        const answer = (await resp.json()) as { test?: { active?: boolean } };
        return answer.test?.active === true;
      }, 20_000, `${account} installed`);
    },
    async stop() {
      await stop(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
