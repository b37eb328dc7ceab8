// The gateway's REST API (gateway/openapi.json is its contract). Errors come as
// {"error": {code, message}}; they are thrown as ApiError with the gateway's message.

import type { Alarm, AuditEntry, SystemNotice } from "./protocol";
import { authFetch } from "./auth.svelte";

export class ApiError extends Error {}

async function call<T>(path: string, init?: RequestInit): Promise<T> {
  const response = await authFetch(path, init);
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(`${response.status} ${text.slice(0, 200)}`);
  }
  if (!response.ok) {
    const error = (body as { error?: { message?: string } } | null)?.error;
    throw new ApiError(error?.message ?? `${response.status}`);
  }
  return body as T;
}

function post<T>(path: string, body: unknown): Promise<T> {
  return call<T>(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

export type CommuneInfo = { id: string; name: string; population: number | null; bbox: [number, number, number, number] | null };

export function territory(): Promise<{ communes: CommuneInfo[] }> {
  return call("api/v1/territory");
}

export type Dma = { id: string; commune: string; zone: string; junctions: number; hull: [number, number][] };

/// The water network's areas; none when the gateway has no water service.
export async function waterDmas(): Promise<Dma[]> {
  try {
    return (await call<{ dmas: Dma[] }>("api/v1/water/dmas")).dmas;
  } catch {
    return [];
  }
}

export type AlarmActionKind = "acknowledge" | "assign" | "comment" | "resolve";

/// An action on an alarm; who acts is the logged-in operator.
export function alarmAction(
  alarmKey: string,
  action: AlarmActionKind,
  extra: { assignee?: string; comment?: string } = {},
): Promise<{ event_id: string; alarm: Alarm | null }> {
  return post("api/v1/alarms/actions", { alarm_key: alarmKey, action, ...extra });
}

export function audit(params: { communes: string[]; limit: number }): Promise<{ items: AuditEntry[] }> {
  const query = new URLSearchParams({ limit: String(params.limit) });
  if (params.communes.length > 0) query.set("commune", params.communes.join(","));
  return call(`api/v1/audit?${query}`);
}

export function logbookEntry(commune: string, text: string): Promise<{ event_id: string; entry: AuditEntry | null }> {
  return post("api/v1/logbook", { commune, text });
}

export function notices(): Promise<{ items: SystemNotice[] }> {
  return call("api/v1/notices");
}

/// A supervisor acknowledges every notice up to this id.
export function acknowledgeNotices(upTo: number): Promise<{ acknowledged: number; left: number }> {
  return post("api/v1/notices/acknowledge", { up_to: upTo });
}
