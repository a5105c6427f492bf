/**
 * The code shown in docs/extension.md, region by region (`// doc:start NAME` ... `// doc:end`):
 * test/snippets.test.ts runs each function against a real backend and checks that the document
 * holds each region verbatim, so the documentation cannot show code that does not work.
 */
// doc:start import
import { createClient, modeOf, type Client, type FetchStripeSignature, type UserContext } from "stripe-app-backend-client";
// doc:end

// doc:start five-lines
export async function installState(baseUrl: string, fetchStripeSignature: FetchStripeSignature, userContext: UserContext) {
  const api = createClient({ baseUrl, fetchStripeSignature, userContext });
  const { data, error } = await api.installation();
  if (error) return `cannot read the installation: ${error.message}`;
  return data.test.active ? "installed in test mode" : "not installed in test mode";
}
// doc:end

// doc:start modes
export async function whereAmI(api: Client, userContext: UserContext, environment: { mode: "live" | "test" }) {
  const mode = modeOf(userContext, environment); // "sandbox" when userContext.account.isSandbox
  const { data, error } = await api.installation(); // sends userContext.account.org_id, if any
  if (error) return `cannot read the installation: ${error.message}`;
  const here = data[mode];
  const calls = here.context ? `Stripe-Context ${here.context}` : "Stripe-Account";
  const org = data.org_id ? ` (organization ${data.org_id})` : "";
  return `${mode}: ${here.active ? "installed" : "not installed"}, calls use ${calls}${org}`;
}
// doc:end

// doc:start task
export async function syncCustomers(api: Client, show: (text: string) => void, signal?: AbortSignal) {
  const started = await api.tasks.start("sync_customers", { page_size: 2 });
  if (started.error) return show(`not started: ${started.error.message}`);
  const done = await api.tasks.wait(started.data.task_id, {
    signal,
    onProgress: (task) => show(`${task.status} ${Math.round((task.progress ?? 0) * 100)}% ${task.note ?? ""}`),
  });
  if (done.error) return show(done.error.code === "aborted" ? "stopped waiting" : done.error.message);
  show(done.data.status === "succeeded" ? `done: ${JSON.stringify(done.data.result)}` : `${done.data.status}: ${done.data.error}`);
}
// doc:end

// doc:start errors
export async function describeError(api: Client): Promise<string> {
  const { data, error } = await api.jobs();
  if (!error) return `${data.jobs.length} jobs`;
  switch (error.status) {
    case 401: return "the signature was refused: is the app secret the backend's?";
    case 403: return error.code === "not_installed" ? "install the app first" : `not allowed: ${error.message}`;
    case 429: return `busy: try again in ${error.retryAfter} s`;
    case 0: return `the backend cannot be reached (${error.code})`;
    default: return `${error.status} ${error.code}: ${error.message}`;
  }
}
// doc:end
