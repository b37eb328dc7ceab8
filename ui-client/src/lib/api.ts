// The gateway's REST API (gateway/openapi.json is its contract). Errors come as
// {"error": {code, message}}; they are thrown as ApiError with the gateway's message.

import type { Alarm, AuditEntry, Command, LatLon, SystemNotice } from "./protocol";
import { authFetch } from "./auth.svelte";

export class ApiError extends Error {
  constructor(
    message: string,
    /// The HTTP status (0: no answer).
    readonly status = 0,
  ) {
    super(message);
  }
}

async function call<T>(path: string, init?: RequestInit): Promise<T> {
  const response = await authFetch(path, init);
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(`${response.status} ${text.slice(0, 200)}`, response.status);
  }
  if (!response.ok) {
    const error = (body as { error?: { message?: string } } | null)?.error;
    throw new ApiError(error?.message ?? `${response.status}`, response.status);
  }
  return body as T;
}

function post<T>(path: string, body: unknown): Promise<T> {
  return call<T>(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

export type CommuneInfo = { id: string; name: string; population: number | null; bbox: [number, number, number, number] | null };

/// Where a KPI should be, and from which value it is a warning, then an alarm (the gateway's
/// `--kpi-targets`, in the tile's own unit: a ratio, seconds...).
export type KpiBand = { target: number; warning: number; alarm: number };
/// The defaults, and the bands of the caller's communes that have their own.
export type KpiTargets = { defaults: Record<string, KpiBand>; communes: Record<string, Record<string, KpiBand>> };

export function territory(): Promise<{ communes: CommuneInfo[]; kpi_targets?: KpiTargets; alarm_flood?: number }> {
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

export type AlarmActionKind = "acknowledge" | "assign" | "comment" | "resolve" | "unshelve";

/// An action on an alarm; who acts is the logged-in operator.
export function alarmAction(
  alarmKey: string,
  action: AlarmActionKind,
  extra: { assignee?: string; comment?: string } = {},
): Promise<{ event_id: string; alarm: Alarm | null }> {
  return post("api/v1/alarms/actions", { alarm_key: alarmKey, action, ...extra });
}

export type BulkAction = "acknowledge" | "shelve" | "unshelve" | "resolve";

/// One action on many alarms: one request, one event (and log book entry) per alarm.
export function bulkAlarmAction(
  alarmKeys: string[],
  action: BulkAction,
  extra: { comment?: string; shelved_until?: string } = {},
): Promise<{ done: { alarm_key: string; event_id: string }[]; refused: { alarm_key: string; error: string }[] }> {
  return post("api/v1/alarms/actions/bulk", { alarm_keys: alarmKeys, action, ...extra });
}

/// Shelves an alarm until `until` (ISO time), with the reason.
export function shelveAlarm(alarmKey: string, until: Date, reason: string): Promise<{ event_id: string; alarm: Alarm | null }> {
  return post("api/v1/alarms/actions", { alarm_key: alarmKey, action: "shelve", shelved_until: until.toISOString(), comment: reason });
}

export type LightingTarget = { streetlight_id: string } | { street: string } | { commune: string } | { polygon: LatLon[] };
export type LightingAction = { switch_on: boolean } | { dim_level: number };

/// A lighting command (the service answers one command per commune the target spans).
/// `commune`: the target is limited to that commune (a street's name is not unique).
export function lightingCommand(target: LightingTarget, action: LightingAction, reason: string, commune?: string): Promise<{ commands: Command[] }> {
  return post("api/v1/commands/lighting", { target, action, reason, ...(commune ? { commune } : {}) });
}

/// A valve operation on a network link.
export function valveCommand(linkId: string, action: "close" | "open", reason: string): Promise<{ commands: Command[] }> {
  return post("api/v1/commands/valve", { link_id: linkId, action, reason });
}

export const REPORT_STATUSES = [
  "open",
  "confirmed",
  "investigating",
  "action_scheduled",
  "in_progress",
  "fixed",
  "closed",
  "duplicate",
  "not_responsible",
] as const;

/// Moves a citizen report on, with a note for the citizen.
export function reportStatus(serviceRequestId: string, status: string, note: string): Promise<{ detailed_status: string }> {
  return post("api/v1/reports/status", { service_request_id: serviceRequestId, status, note });
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

/// One measure over time: `[ms since the epoch, value]`, oldest first, with the limits the
/// asset's alarms named for it.
export type HistorySeries = { name: string; unit: string; points: [number, number][]; limits: number[] };
export type AlarmMark = { at_ms: number; key: string; alarm_type: string; severity: string; raised: boolean };
export type AssetHistory = {
  domain: string;
  id: string;
  from_ms: number;
  to_ms: number;
  series: HistorySeries[];
  alarms: AlarmMark[];
  events: number;
  truncated: boolean;
};

/// An asset's recent history (24 h by default), read by the gateway from the events stream.
export function assetHistory(domain: string, id: string, hours = 24, signal?: AbortSignal): Promise<AssetHistory> {
  return call(`api/v1/assets/${encodeURIComponent(domain)}/${encodeURIComponent(id)}/history?hours=${hours}`, { signal });
}
