/**
 * The backend client for the views: one per view, built from the view's props.
 *
 * `BACKEND_URL` comes from the manifest's `constants` (`environment.constants`), so the same
 * bundle talks to a tunnel in development and to production once uploaded; it must match an
 * entry of `ui_extension.content_security_policy.connect-src` (`run.py manifest` prints it).
 */
import type { ExtensionContextValue } from "@stripe/ui-extension-sdk/context";
import { fetchStripeSignature } from "@stripe/ui-extension-sdk/utils";
import { createClient, type Client } from "stripe-app-backend-client";

export const DEFAULT_BACKEND_URL = "http://localhost:8000";

export function backendUrl(environment: ExtensionContextValue["environment"]): string {
  const configured = environment.constants?.["BACKEND_URL"];
  return typeof configured === "string" ? configured : DEFAULT_BACKEND_URL;
}

/** The client of a view. Its `installation()` sends `userContext.account.org_id` (the account's
 * organization, when it has one); a call that names a mode uses `modeOf(userContext,
 * environment)` (`sandbox` when `userContext.account.isSandbox`). */
export function backendFor({ userContext, environment }: ExtensionContextValue): Client {
  return createClient({ baseUrl: backendUrl(environment), fetchStripeSignature, userContext });
}

/** Whether the user may set or delete credentials: the backend's `CREDENTIAL_ROLES` default. */
export function isAdmin(userContext: ExtensionContextValue["userContext"]): boolean {
  return (userContext.roles ?? []).some((role) => role.id === "admin" || role.id === "super_admin");
}
