// The operator's session: login, the access token on every request (REST, WebSocket, map
// sources), a refresh before it expires, logout. Tokens live in sessionStorage: they end with
// the tab, and another tab logs in on its own.

import { learnClock } from "./clock.svelte";

export type Role = "supervisor" | "operator" | "viewer" | "admin" | "integrator";

export type Operator = { login: string; role: Role; all_communes: boolean; communes: string[] };

type Tokens = { access_token: string; refresh_token: string; expires_in: number; operator: Operator };

const KEY = "vigie.session";

type Session = { access: string; refresh: string; expiresAt: number; operator: Operator };

function saved(): Session | null {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? "null") as Session | null;
    return s && s.access && s.refresh && s.operator ? s : null;
  } catch {
    return null;
  }
}

export const auth = $state<{ session: Session | null; error: string }>({ session: saved(), error: "" });

let refreshTimer: ReturnType<typeof setTimeout> | null = null;

function keep(tokens: Tokens) {
  const session: Session = {
    access: tokens.access_token,
    refresh: tokens.refresh_token,
    expiresAt: Date.now() + tokens.expires_in * 1000,
    operator: tokens.operator,
  };
  auth.session = session;
  auth.error = "";
  sessionStorage.setItem(KEY, JSON.stringify(session));
  scheduleRefresh();
}

/// Refreshes at 80 % of the access token's life.
export function scheduleRefresh() {
  if (refreshTimer) clearTimeout(refreshTimer);
  const session = auth.session;
  if (!session) return;
  const left = session.expiresAt - Date.now();
  refreshTimer = setTimeout(() => void refresh(), Math.max(1000, left * 0.8));
}

async function post(path: string, body: unknown): Promise<Response> {
  const sentAt = Date.now();
  const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  learnClock(response, sentAt);
  return response;
}

async function message(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: { message?: string } };
    return body.error?.message ?? String(response.status);
  } catch {
    return String(response.status);
  }
}

export async function login(loginName: string, password: string): Promise<boolean> {
  const response = await post("api/v1/auth/login", { login: loginName, password });
  if (!response.ok) {
    auth.error = await message(response);
    return false;
  }
  keep((await response.json()) as Tokens);
  return true;
}

let refreshing: Promise<boolean> | null = null;

/// A new access token; false (and the login screen) when the session is over.
export function refresh(): Promise<boolean> {
  refreshing ??= (async () => {
    const session = auth.session;
    if (!session) return false;
    try {
      const response = await post("api/v1/auth/refresh", { refresh_token: session.refresh });
      if (response.ok) {
        keep((await response.json()) as Tokens);
        return true;
      }
      if (response.status === 401) end(await message(response));
      // Anything else (a replica whose bus is away answers 503): the session stands, retried.
      else scheduleRefresh();
      return false;
    } catch {
      // The gateway is unreachable: keep the session, the next attempt may succeed.
      scheduleRefresh();
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/// The session is over (logout, revoked, expired): back to the login screen.
export function end(reason = "") {
  if (refreshTimer) clearTimeout(refreshTimer);
  auth.session = null;
  auth.error = reason;
  sessionStorage.removeItem(KEY);
}

/// Closes the session at the gateway first, then here: once the login screen shows, the token opens
/// nothing (it was shown before the gateway had closed it, and a test saw the token still work).
export async function logout() {
  const token = auth.session?.access;
  if (token) {
    try {
      const headers = { authorization: `Bearer ${token}` };
      await fetch("api/v1/auth/logout", { method: "POST", headers, signal: AbortSignal.timeout(5000) });
    } catch {
      // Unreachable gateway: the session ends here anyway (its token expires on its own).
    }
  }
  end();
}

export function token(): string {
  return auth.session?.access ?? "";
}

/// May act (alarm actions, log book): supervisors and commune operators.
export function mayAct(): boolean {
  const role = auth.session?.operator.role;
  return role === "supervisor" || role === "operator";
}

/// fetch with the access token; one refresh and retry on a 401.
export async function authFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const send = async () => {
    const sentAt = Date.now();
    const answer = await fetch(path, { ...init, headers: { ...(init.headers ?? {}), authorization: `Bearer ${token()}` } });
    learnClock(answer, sentAt);
    return answer;
  };
  let response = await send();
  if (response.status === 401 && (await refresh())) response = await send();
  return response;
}
