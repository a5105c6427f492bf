/**
 * A drawer view showing what the backend knows about this account, through
 * stripe-app-backend-client:
 * - the install state in each mode (live, test, sandbox), the permissions granted and the
 *   `Stripe-Context` the backend's calls use (`installation()`, which sends the account's
 *   `org_id` when it belongs to an organization);
 * - the scheduled jobs and their last runs (`jobs()`);
 * - a task started from a button, with its progress (`tasks.start`, `tasks.wait`; the wait is
 *   aborted when the view unmounts);
 * - a credential form, shown to admins only (`credentials.set`, `credentials.list`).
 * The mode a call names is `modeOf(userContext, environment)`: `sandbox` when the account is a
 * sandbox (`userContext.account.isSandbox`), else the Dashboard's `environment.mode`.
 * Every error is the client's typed `{ code, message, status }`, shown in a banner.
 */
import {
  Badge,
  Banner,
  Box,
  Button,
  ContextView,
  Divider,
  Inline,
  List,
  ListItem,
  Select,
  Spinner,
  TextField,
} from "@stripe/ui-extension-sdk/ui";
import type { ExtensionContextValue } from "@stripe/ui-extension-sdk/context";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { modeOf, type ClientError, type CredentialList, type Installation, type Jobs, type Mode, type Task } from "stripe-app-backend-client";
import { backendFor, isAdmin } from "../backend";

type ModeState = Installation["live"];

const MODES: readonly Mode[] = ["live", "test", "sandbox"];

function when(unix: number | null | undefined): string {
  return unix ? new Date(unix * 1000).toLocaleString() : "never";
}

function ErrorBanner({ error, onDismiss }: { error: ClientError; onDismiss?: () => void }) {
  const title =
    error.status === 0
      ? "The backend cannot be reached"
      : error.status === 403
        ? "Not allowed"
        : `The backend answered ${error.status}`;
  return (
    <Banner
      type="critical"
      title={title}
      description={`${error.message} (${error.code})`}
      {...(onDismiss ? { onDismiss } : {})}
    />
  );
}

function ModeRow({ mode, state }: { mode: Mode; state: ModeState }) {
  const granted = state.permissions_granted;
  return (
    <ListItem
      title={`${mode} mode`}
      secondaryTitle={
        (state.active
          ? granted
            ? `granted: ${granted.join(", ") || "none"}`
            : "permissions not known yet"
          : "not installed") + (state.context ? `; calls use Stripe-Context ${state.context}` : "")
      }
      value={
        <Badge type={state.active ? (state.approval_required ? "warning" : "positive") : "neutral"}>
          {state.active ? (state.approval_required ? "approve new permissions" : "installed") : "off"}
        </Badge>
      }
    />
  );
}

function JobsList({ jobs }: { jobs: Jobs["jobs"] }) {
  if (jobs.length === 0) return <Box>No scheduled jobs.</Box>;
  return (
    <List>
      {jobs.map((job) => (
        <ListItem
          key={`${job.job}-${job.mode}`}
          title={`${job.job} (${job.mode})`}
          secondaryTitle={`last run: ${when(job.last_run?.started)} ${job.last_run?.outcome ?? ""}; next: ${when(job.next_run)}`}
          value={job.paused ? <Badge type="warning">paused</Badge> : <Badge type="positive">scheduled</Badge>}
        />
      ))}
    </List>
  );
}

function TaskButton({ context }: { context: ExtensionContextValue }) {
  const api = useMemo(() => backendFor(context), [context]);
  const mode = modeOf(context.userContext, context.environment);
  const [task, setTask] = useState<Task | null>(null);
  const [error, setError] = useState<ClientError | null>(null);
  const [running, setRunning] = useState(false);
  const abort = useRef<AbortController | null>(null);
  useEffect(() => () => abort.current?.abort(), []); // stop waiting when the view goes away

  const start = useCallback(async () => {
    setRunning(true);
    setError(null);
    abort.current = new AbortController();
    const started = await api.tasks.start("sync_customers", { mode });
    if (started.error) {
      setError(started.error);
      setRunning(false);
      return;
    }
    const done = await api.tasks.wait(started.data.task_id, { signal: abort.current.signal, onProgress: setTask });
    if (done.error && done.error.code !== "aborted") setError(done.error);
    setRunning(false);
  }, [api, mode]);

  return (
    <Box css={{ stack: "y", gap: "small" }}>
      <Inline css={{ font: "heading" }}>Count customers</Inline>
      {error && <ErrorBanner error={error} onDismiss={() => setError(null)} />}
      <Button type="primary" onPress={start} disabled={running} pending={running}>
        {running ? "Counting…" : "Count customers"}
      </Button>
      {task && (
        <Inline>
          {task.status === "running" || task.status === "queued" ? <Spinner size="small" /> : null}{" "}
          {task.status} {task.progress !== null ? `${Math.round(task.progress * 100)}%` : ""} {task.note ?? ""}
          {task.status === "failed" ? ` ${task.error ?? ""}` : ""}
        </Inline>
      )}
    </Box>
  );
}

function CredentialForm({ context }: { context: ExtensionContextValue }) {
  const api = useMemo(() => backendFor(context), [context]);
  const [mode, setMode] = useState<Mode>(modeOf(context.userContext, context.environment));
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [stored, setStored] = useState<CredentialList["credentials"]>([]);
  const [error, setError] = useState<ClientError | null>(null);
  const [saving, setSaving] = useState(false);

  const refresh = useCallback(async () => {
    const { data, error } = await api.credentials.list();
    if (error) setError(error);
    else setStored(data.credentials);
  }, [api]);
  useEffect(() => {
    void refresh();
  }, [refresh]);

  const save = useCallback(async () => {
    setSaving(true);
    const { error } = await api.credentials.set({ mode, name, value });
    setSaving(false);
    if (error) return setError(error);
    setValue(""); // never kept in the view once stored
    setError(null);
    await refresh();
  }, [api, mode, name, value, refresh]);

  return (
    <Box css={{ stack: "y", gap: "small" }}>
      <Inline css={{ font: "heading" }}>Credentials</Inline>
      {error && <ErrorBanner error={error} onDismiss={() => setError(null)} />}
      <List>
        {stored.map((c) => (
          <ListItem key={`${c.mode}-${c.name}`} title={c.name} secondaryTitle={`${c.mode}, ${c.kind}, stored ${when(c.updated)}`} />
        ))}
      </List>
      <Select label="Mode" value={mode} onChange={(e) => setMode(MODES.find((m) => m === e.target.value) ?? "test")}>
        {MODES.map((m) => (
          <option key={m} value={m}>
            {m}
          </option>
        ))}
      </Select>
      <TextField label="Name" placeholder="acme_api_key" value={name} onChange={(e) => setName(e.target.value)} />
      <TextField label="Value" type="password" value={value} onChange={(e) => setValue(e.target.value)} />
      <Button onPress={save} disabled={saving || !name || !value} pending={saving}>
        Store
      </Button>
    </Box>
  );
}

const BackendView = (context: ExtensionContextValue) => {
  const api = useMemo(() => backendFor(context), [context]);
  const [installation, setInstallation] = useState<Installation | null>(null);
  const [jobs, setJobs] = useState<Jobs["jobs"] | null>(null);
  const [error, setError] = useState<ClientError | null>(null);

  useEffect(() => {
    let live = true;
    void (async () => {
      const state = await api.installation();
      if (!live) return;
      if (state.error) return setError(state.error);
      setInstallation(state.data);
      if (!MODES.some((m) => state.data[m].active)) return; // jobs() would answer 403
      const list = await api.jobs();
      if (!live) return;
      if (list.error) setError(list.error);
      else setJobs(list.data.jobs);
    })();
    return () => {
      live = false;
    };
  }, [api]);

  return (
    <ContextView title="Backend" description="What this app's backend knows about your account">
      <Box css={{ stack: "y", gap: "medium" }}>
        {error && <ErrorBanner error={error} />}
        {!installation && !error && <Spinner />}
        {installation && (
          <List>
            {MODES.map((m) => (
              <ModeRow key={m} mode={m} state={installation[m]} />
            ))}
          </List>
        )}
        {installation?.org_id && (
          <Inline>
            Organization {installation.org_id}
          </Inline>
        )}
        {jobs && <JobsList jobs={jobs} />}
        <Divider />
        <TaskButton context={context} />
        {isAdmin(context.userContext) && (
          <>
            <Divider />
            <CredentialForm context={context} />
          </>
        )}
      </Box>
    </ContextView>
  );
};

export default BackendView;
