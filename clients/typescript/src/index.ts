/**
 * A typed client for the Stripe App backend, for the app's UI extension.
 *
 *     const api = createClient({ baseUrl, fetchStripeSignature, userContext });
 *     const { data, error } = await api.installation();
 *
 * Contract:
 * - Every call signs its own body: it asks `fetchStripeSignature(payload)` for a signature and
 *   posts `JSON.stringify({...payload, user_id, account_id})` (payload keys first, in their
 *   order, then `user_id`, then `account_id`: exactly the string Stripe signed) with the
 *   `Stripe-Signature` header. `user_id` is `userContext.id`, `account_id` is
 *   `userContext.account.id`. Calls that need the user's roles (`credentials.set`,
 *   `credentials.delete`) add `stripe_roles: userContext.roles` to the payload, as given.
 *   `installation()` adds `org_id: userContext.account.org_id` when the account belongs to an
 *   organization (the backend answers it back, beside each mode's `context`).
 * - Modes: `live`, `test` and `sandbox`. The Dashboard's `environment.mode` says only live or
 *   test; a sandbox is told by `userContext.account.isSandbox`: `modeOf(userContext,
 *   environment)` is the mode to name in a call (a task's `mode`, a credential's).
 * - A call never throws: it resolves to `{ data }` or to `{ error: { code, message, status } }`.
 *   `code` and `message` are the backend's error body (`{"error": {"code", "message"}}`);
 *   failures on this side have `status` 0 and the codes `network_error` (fetch failed),
 *   `aborted` (the signal), `signature_failed` (`fetchStripeSignature` failed), `no_user`
 *   (`userContext.id` is missing) and `bad_response` (an answer that is not the backend's JSON).
 * - A 401 `signature_replayed` (the same payload signed twice within one second: Stripe signs
 *   whole seconds, and a state-changing endpoint accepts a signature once) is signed again once
 *   the second has turned and sent again (up to 5 times); the backend did nothing for the
 *   refused one.
 * - A 429 is retried after its `Retry-After` (re-signed; a 429 means the backend did nothing),
 *   up to `retry.max429` times and while the wait is at most `retry.maxRetryAfter` seconds;
 *   then the 429 is returned, with `retryAfter` in seconds. In a browser the extension can read
 *   `Retry-After` only if the backend lists it in `Access-Control-Expose-Headers`; when it cannot,
 *   `retry.defaultRetryAfter` (10 s, the backend's own value) is used.
 * - `tasks.wait` polls `POST /api/tasks/status` with backoff (`minDelay`, growing by half up to
 *   `maxDelay` while nothing changes, back to `minDelay` when the task moves), reports each
 *   change to `onProgress`, and ends with the finished task (`succeeded`, `failed` or
 *   `cancelled`: look at `data.status`) or an error; `aborted` when its signal aborts.
 *
 * No runtime dependency: `fetch` (the extension's, or `options.fetch`) and the generated types.
 */
import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

/** A JSON value, as `JSON.stringify` writes it (the UI extension SDK's `NestableJSONValue`). */
export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };
/** What `fetchStripeSignature` takes: a JSON object. */
export type SignaturePayload = { [key: string]: JSONValue };
/** The SDK's `fetchStripeSignature` (`@stripe/ui-extension-sdk/utils`), or a fake for tests. */
export type FetchStripeSignature = (additionalPayload?: SignaturePayload) => Promise<string>;

/** A role as the SDK gives it (`RoleDefinition`: compare `id`, not `name`), or a role id. */
export type Role = { id?: string; name?: string; type?: string } | string;

/** The parts of the SDK's `userContext` the client reads; pass the SDK's object as it is. */
export interface UserContext {
  id?: string | undefined;
  account: {
    id: string;
    /** The organization the account belongs to, if any (`org_...`): sent by `installation()`. */
    org_id?: string | null | undefined;
    /** Whether the account is a sandbox (the Dashboard's `environment.mode` then says test). */
    isSandbox?: boolean | undefined;
  };
  roles?: readonly Role[] | undefined;
}

export interface ClientError {
  /** The backend's error code (`not_installed`, `bad_signature`...), or one of this side's. */
  code: string;
  message: string;
  /** The HTTP status; 0 when no answer came (network, abort, signature). */
  status: number;
  /** Seconds to wait before trying again (a 429 the client did not retry). */
  retryAfter?: number;
}

export type Result<T> = { data: T; error?: never } | { data?: never; error: ClientError };

export interface RetryInfo {
  path: string;
  status: number;
  /** Seconds the client waits before the next attempt. */
  retryAfter: number;
  /** 1 for the first retry. */
  attempt: number;
}

export interface ClientOptions {
  /** The backend's base URL, as listed in the manifest's `connect-src`. */
  baseUrl: string;
  fetchStripeSignature: FetchStripeSignature;
  userContext: UserContext;
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  retry?: {
    /** Retries of a call answered 429 (default 3; 0: return the 429 at once). */
    max429?: number;
    /** The longest `Retry-After` waited for, in seconds (default 60); longer: returned. */
    maxRetryAfter?: number;
    /** Seconds to wait when a 429 has no readable `Retry-After` (default 10). */
    defaultRetryAfter?: number;
  };
  /** Told before each wait for a retry (to show "busy, retrying in 10 s"). */
  onRetry?: (info: RetryInfo) => void;
}

export interface CallOptions {
  signal?: AbortSignal | undefined;
  /** Values for the path's `{placeholders}`, e.g. `{ name: "sync_customers" }`. */
  params?: Record<string, string>;
}

export interface WaitOptions {
  signal?: AbortSignal | undefined;
  /** Told the task each time its status, progress or note changes (and once at the start). */
  onProgress?: (task: Task) => void;
  /** First delay between polls, in ms (default 500). */
  minDelay?: number;
  /** Longest delay between polls, in ms (default 5000). */
  maxDelay?: number;
  /** Consecutive failed polls (network, 5xx) tolerated before giving up (default 5). */
  maxErrors?: number;
}

// ---- types derived from the generated schema --------------------------------------------------

/** The paths the backend answers with POST (its signed `/api/...` endpoints among them). */
export type PostPath = {
  [P in keyof paths]: paths[P] extends { post: { responses: unknown } } ? P : never;
}[keyof paths];

type PostOp<P extends PostPath> = paths[P] extends { post: infer O } ? O : never;

type BodyOf<P extends PostPath> =
  PostOp<P> extends { requestBody?: { content: { "application/json": infer B } } } ? B : object;

/** What a call to `path` signs and sends besides `user_id` and `account_id`. */
export type Payload<P extends PostPath> = Omit<BodyOf<P>, "user_id" | "account_id">;

type Success = 200 | 201 | 202;
/** The JSON a successful call to `path` answers. */
export type Data<P extends PostPath> =
  PostOp<P> extends { responses: infer R }
    ? {
        [K in keyof R]: K extends Success
          ? R[K] extends { content: { "application/json": infer D } }
            ? D
            : never
          : never;
      }[keyof R]
    : never;

export type Installation = Data<"/api/installation">;
export type Jobs = Data<"/api/jobs">;
export type WhoAmI = Data<"/api/whoami">;
export type Task = components["schemas"]["Task"];
export type TaskStarted = Data<"/api/tasks/{name}">;
export type Mode = components["schemas"]["Mode"];
export type CredentialList = Data<"/api/credentials/list">;
export type CredentialSet = Data<"/api/credentials/set">;
export type CredentialDeleted = Data<"/api/credentials/delete">;

export const FINISHED: ReadonlySet<Task["status"]> = new Set(["succeeded", "failed", "cancelled"]);

/** The mode the backend knows the user's account by: `sandbox` when the account is a sandbox
 * (`userContext.account.isSandbox`), else the Dashboard's `environment.mode` (live or test). */
export function modeOf(
  userContext: Pick<UserContext, "account">,
  environment: { mode: "live" | "test" },
): Mode {
  return userContext.account.isSandbox ? "sandbox" : environment.mode;
}

// ---- the client -------------------------------------------------------------------------------

export interface Client {
  /** POST a signed call to any path of the schema (the app's own endpoints too). */
  post<P extends PostPath>(path: P, payload?: Payload<P>, options?: CallOptions): Promise<Result<Data<P>>>;
  /** The installation in each mode (live, test, sandbox), each with its `context`; sends
   * `userContext.account.org_id` as `org_id` when there is one, answered back as `org_id`. */
  installation(options?: CallOptions): Promise<Result<Installation>>;
  jobs(options?: CallOptions): Promise<Result<Jobs>>;
  whoami(options?: CallOptions): Promise<Result<WhoAmI>>;
  credentials: {
    list(options?: CallOptions): Promise<Result<CredentialList>>;
    set(
      credential: { mode: Mode; name: string; value: string },
      options?: CallOptions,
    ): Promise<Result<CredentialSet>>;
    delete(credential: { mode: Mode; name: string }, options?: CallOptions): Promise<Result<CredentialDeleted>>;
  };
  tasks: {
    /** Start the task `name` with `input` (signed; `mode`, e.g. `modeOf(...)`, picks the mode of
     * an app installed in several). */
    start(name: string, input?: SignaturePayload, options?: CallOptions): Promise<Result<TaskStarted>>;
    status(taskId: string, options?: CallOptions): Promise<Result<Task>>;
    wait(taskId: string, options?: WaitOptions): Promise<Result<Task>>;
  };
}

function fail(code: string, message: string, status = 0): { error: ClientError } {
  return { error: { code, message, status } };
}

/** Resolves after `ms`, or at once when `signal` aborts (the caller checks `signal.aborted`). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** `Retry-After` in seconds: a number of seconds or an HTTP date; undefined when unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

function isErrorBody(body: unknown): body is { error: { code: string; message: string } } {
  if (typeof body !== "object" || body === null || !("error" in body)) return false;
  const e = (body as { error: unknown }).error;
  return (
    typeof e === "object" &&
    e !== null &&
    typeof (e as { code?: unknown }).code === "string" &&
    typeof (e as { message?: unknown }).message === "string"
  );
}

/** How many times one call is signed again after `signature_replayed` (one second each). */
const MAX_RESIGN = 5;

export function createClient(options: ClientOptions): Client {
  const base = options.baseUrl.replace(/\/+$/, "");
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const max429 = options.retry?.max429 ?? 3;
  const maxRetryAfter = options.retry?.maxRetryAfter ?? 60;
  const defaultRetryAfter = options.retry?.defaultRetryAfter ?? 10;
  const user = options.userContext;

  function roles(): JSONValue {
    // As the SDK gives them: Stripe checks `stripe_roles` against the user when it signs.
    return (user.roles ?? []) as unknown as JSONValue;
  }

  async function once<T>(path: string, payload: SignaturePayload, signal?: AbortSignal): Promise<
    Result<T> & { retryAfter?: number }
  > {
    if (!user.id) return fail("no_user", "userContext.id is missing: the call cannot be signed");
    const { user_id: _u, account_id: _a, ...rest } = payload;
    let signature: string;
    try {
      signature = await options.fetchStripeSignature(rest);
    } catch (err) {
      return fail("signature_failed", `fetchStripeSignature failed: ${String(err)}`);
    }
    if (signal?.aborted) return fail("aborted", "the call was aborted");
    const body = JSON.stringify({ ...rest, user_id: user.id, account_id: user.account.id });
    let resp: Response;
    try {
      resp = await doFetch(base + path, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Stripe-Signature": signature },
        body,
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (signal?.aborted) return fail("aborted", "the call was aborted");
      return fail("network_error", `${base}${path} cannot be reached: ${String(err)}`);
    }
    let text: string;
    try {
      text = await resp.text();
    } catch (err) {
      if (signal?.aborted) return fail("aborted", "the call was aborted");
      return fail("network_error", `the answer from ${path} was cut: ${String(err)}`, resp.status);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (resp.ok) {
      if (json === undefined) return fail("bad_response", `${path} answered ${resp.status} without JSON`, resp.status);
      return { data: json as T };
    }
    const error: ClientError = isErrorBody(json)
      ? { code: json.error.code, message: json.error.message, status: resp.status }
      : {
          code: `http_${resp.status}`,
          message: `${path} answered ${resp.status} ${resp.statusText}`.trim(),
          status: resp.status,
        };
    if (resp.status === 429) error.retryAfter = parseRetryAfter(resp.headers.get("Retry-After")) ?? defaultRetryAfter;
    return { error };
  }

  async function call<T>(path: string, payload: SignaturePayload, signal?: AbortSignal): Promise<Result<T>> {
    let resigned = 0;
    for (let attempt = 1; ; attempt++) {
      const result = await once<T>(path, payload, signal);
      if (result.error?.code === "signature_replayed" && resigned < MAX_RESIGN) {
        // Stripe signs whole seconds: the same payload signed twice within one second is one
        // signature, which a state-changing endpoint accepts once. The backend did nothing for
        // this call; sign it again once the second has turned (a new signature).
        // (n identical calls at once go through in n - 1 seconds.)
        resigned++;
        attempt--;
        await sleep(1000 - (Date.now() % 1000) + 10, signal);
        if (signal?.aborted) return fail("aborted", "the call was aborted while waiting to retry");
        continue;
      }
      const wait = result.error?.retryAfter;
      if (result.error?.status !== 429 || wait === undefined || attempt > max429 || wait > maxRetryAfter) {
        return result;
      }
      options.onRetry?.({ path, status: 429, retryAfter: wait, attempt });
      await sleep(wait * 1000, signal);
      if (signal?.aborted) return fail("aborted", "the call was aborted while waiting to retry");
    }
  }

  function fill(path: string, params?: Record<string, string>): string {
    return path.replace(/\{([^}]+)\}/g, (_, key: string) => {
      const value = params?.[key];
      if (value === undefined) throw new TypeError(`no value for {${key}} in ${path}`);
      return encodeURIComponent(value);
    });
  }

  function post<P extends PostPath>(path: P, payload?: Payload<P>, opts?: CallOptions): Promise<Result<Data<P>>> {
    let url: string;
    try {
      url = fill(path, opts?.params);
    } catch (err) {
      return Promise.resolve(fail("bad_path", (err as Error).message));
    }
    return call<Data<P>>(url, (payload ?? {}) as SignaturePayload, opts?.signal);
  }

  async function wait(taskId: string, opts: WaitOptions = {}): Promise<Result<Task>> {
    const minDelay = opts.minDelay ?? 500;
    const maxDelay = opts.maxDelay ?? 5000;
    const maxErrors = opts.maxErrors ?? 5;
    const signal = opts.signal;
    let delay = minDelay;
    let errors = 0;
    let last = "";
    for (;;) {
      if (signal?.aborted) return fail("aborted", "waiting for the task was aborted");
      const result = await call<Task>("/api/tasks/status", { task_id: taskId }, signal);
      if (result.error) {
        const transient = result.error.status === 0 || result.error.status >= 500;
        if (result.error.code === "aborted" || !transient || ++errors > maxErrors) return result;
      } else {
        errors = 0;
        const task = result.data;
        const seen = JSON.stringify([task.status, task.progress, task.note]);
        if (seen !== last) {
          last = seen;
          delay = minDelay;
          opts.onProgress?.(task);
        } else {
          delay = Math.min(maxDelay, Math.round(delay * 1.5));
        }
        if (FINISHED.has(task.status)) return result;
      }
      await sleep(delay, signal);
    }
  }

  return {
    post,
    installation: (o) => {
      const org = user.account.org_id;
      return post("/api/installation", typeof org === "string" && org ? { org_id: org } : {}, o);
    },
    jobs: (o) => post("/api/jobs", {}, o),
    whoami: (o) => post("/api/whoami", {}, o),
    credentials: {
      list: (o) => post("/api/credentials/list", {}, o),
      set: (c, o) =>
        call("/api/credentials/set", { mode: c.mode, name: c.name, value: c.value, stripe_roles: roles() }, o?.signal),
      delete: (c, o) =>
        call("/api/credentials/delete", { mode: c.mode, name: c.name, stripe_roles: roles() }, o?.signal),
    },
    tasks: {
      start: (name, input = {}, o) =>
        call(`/api/tasks/${encodeURIComponent(name)}`, input, o?.signal),
      status: (taskId, o) => call("/api/tasks/status", { task_id: taskId }, o?.signal),
      wait,
    },
  };
}
