// The console's connection to the gateway's live protocol v1 and the state it keeps: every asset,
// alarm, KPI and command under the session's filter. Honest about liveness: `link` says whether
// what is shown is live, stale (no heartbeat for three of its intervals, or the gateway itself
// cut from the event stream) or being reconnected; after a network loss it resumes from the last
// sequence it saw, so nothing is missed and nothing is reloaded.
//
// Assets are many (30,000 streetlights): they live in plain Maps, and components follow
// `version`, which changes at most every RENDER_EVERY_MS, rather than every object being reactive.

import type { Alarm, Asset, Command, Kpi, ServerFrame, Upstream } from "./protocol";
import { end, refresh, token } from "./auth.svelte";
import { assetKey, CLOSE_CODES, DOMAINS } from "./protocol";
import { GAPS_KEPT, heartbeatInterval } from "./heartbeat";

type SnapshotFrame = Extract<ServerFrame, { type: "snapshot" }>;

export type Link = "connecting" | "live" | "stale" | "reconnecting";

const RENDER_EVERY_MS = 250;
/// Until two heartbeats are seen, the gateway's default interval is assumed.
const DEFAULT_HEARTBEAT_MS = 5_000;
const MISSED_HEARTBEATS_BEFORE_STALE = 3;
const MISSED_HEARTBEATS_BEFORE_RECONNECT = 6;
/// The gateway's close codes (proto::live::close_code): a token expired, a session revoked, too
/// many snapshots for this login (the reason says when to retry: "retry in N s").
const { TOKEN_EXPIRED: CLOSE_TOKEN_EXPIRED, REVOKED: CLOSE_REVOKED, TOO_MANY_SNAPSHOTS: CLOSE_TOO_MANY_SNAPSHOTS } = CLOSE_CODES;

/// How long a close asks the client to wait, in ms (none: not said).
export function retryAfterMs(code: number, reason: string): number | null {
  if (code !== CLOSE_TOO_MANY_SNAPSHOTS) return null;
  const seconds = /retry in (\d+) s/.exec(reason)?.[1];
  return seconds ? Number(seconds) * 1000 : 2000;
}

export class LiveState {
  link = $state<Link>("connecting");
  /// The gateway's own state: `stale` when it is cut from the event stream.
  upstream = $state<Upstream>("live");
  seq = $state(0);
  /// When the last frame (of any kind) arrived, and when the data last changed (ms since epoch).
  lastHeardAt = $state(0);
  lastChangeAt = $state(0);
  /// When the link was last live: the age of what is shown once it is not.
  liveUntil = $state(0);
  version = $state(0);
  /// System notices waiting for a supervisor (events the view could never apply).
  notices = $state(0);
  /// Reconnections since the page opened (resumed or with a fresh snapshot).
  reconnects = $state(0);
  resumed = $state(0);

  readonly assets = new Map<string, Asset>();
  readonly alarms = new Map<string, Alarm>();
  readonly kpis = new Map<string, Kpi>();
  readonly commands = new Map<string, Command>();
  /// Domains whose assets changed since the map last took them.
  readonly dirtyDomains = new Set<string>();

  /// Called for each critical alarm that is newly raised (or raised again) while live.
  onCriticalRaised: (alarm: Alarm) => void = () => {};

  #socket: WebSocket | null = null;
  #communes: string[] = [];
  #retryMs = 250;
  #heartbeatMs = DEFAULT_HEARTBEAT_MS;
  #lastHeartbeatAt = 0;
  /// The latest gaps between two heartbeats (ms).
  #gaps: number[] = [];
  #pendingRender = false;
  #snapshotSeen = false;
  /// A snapshot whose frames are still coming (every one but its last says `more`).
  #partialSnapshot: SnapshotFrame | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #stopped = false;

  constructor(private readonly base: URL) {}

  start(communes: string[]) {
    this.#communes = communes;
    this.#connect();
    this.#timer = setInterval(() => this.#checkStale(), 1000);
  }

  stop() {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#socket?.close();
  }

  /// Shows only these communes (all when empty): a fresh snapshot under the new filter.
  setCommunes(communes: string[]) {
    this.#communes = communes;
    this.#snapshotSeen = false;
    this.seq = 0;
    this.#socket?.close();
  }

  #url(): string {
    const url = new URL("ws", this.base);
    url.protocol = this.base.protocol === "https:" ? "wss:" : "ws:";
    // After a network loss, ask for what was missed since the last sequence seen.
    if (this.#snapshotSeen && this.seq > 0) url.searchParams.set("resume_from", String(this.seq));
    if (this.#communes.length > 0) url.searchParams.set("communes", this.#communes.join(","));
    // Snapshots in frames of about 16 KiB (gathered in #receive): the gateway keeps small buffers.
    url.searchParams.set("split_snapshots", "true");
    return url.toString();
  }

  #connect() {
    if (this.#stopped) return;
    // The token goes as a subprotocol: never in the URL (it would end up in logs).
    const socket = new WebSocket(this.#url(), ["vigie.v1", `bearer.${token()}`]);
    this.#socket = socket;
    this.#partialSnapshot = null;
    // The delay between attempts is reset once the gateway has started the session (a snapshot
    // or a resume), not at the upgrade: an upgrade it then closes (4029) must not loop fast.
    socket.onmessage = (message) => {
      if (socket !== this.#socket) return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(message.data as string) as ServerFrame;
      } catch {
        console.warn("gateway: a frame that is not JSON");
        return;
      }
      this.#receive(frame);
    };
    socket.onclose = (event) => {
      if (socket !== this.#socket || this.#stopped) return;
      if (event.code === CLOSE_REVOKED) {
        end("");
        return;
      }
      if (this.link === "live") this.liveUntil = Date.now();
      // 1012: the gateway replaced its view (a checkpoint, a recreated stream): what this page
      // holds is not of it, and no resume can follow it. A fresh snapshot.
      if (event.code === 1012) {
        this.#snapshotSeen = false;
        this.seq = 0;
      }
      this.link = "reconnecting";
      // An expired token (or a refused upgrade, which a browser reports as 1006): a fresh token
      // first, then at once, resuming from the last sequence.
      const expired = event.code === CLOSE_TOKEN_EXPIRED || event.code === 1006;
      const asked = retryAfterMs(event.code, event.reason);
      const delay = event.code === CLOSE_TOKEN_EXPIRED ? 0 : Math.max(asked ?? 0, this.#retryMs);
      this.#retryMs = Math.min(this.#retryMs * 2, 4000);
      setTimeout(async () => {
        if (expired) await refresh();
        this.reconnects += 1;
        this.#connect();
      }, delay);
    };
  }

  #receive(frame: ServerFrame) {
    const now = Date.now();
    this.lastHeardAt = now;
    switch (frame.type) {
      case "snapshot": {
        // A large view comes in several frames: gathered, then applied at once.
        const partial = this.#partialSnapshot;
        const more = frame.more === true;
        if (partial && partial.seq === frame.seq) {
          (partial.assets ??= []).push(...(frame.assets ?? []));
          (partial.alarms ??= []).push(...(frame.alarms ?? []));
          (partial.commands ??= []).push(...(frame.commands ?? []));
          (partial.kpis ??= []).push(...(frame.kpis ?? []));
          frame = partial;
        }
        if (more) {
          this.#partialSnapshot = frame;
          break;
        }
        this.#partialSnapshot = null;
        this.assets.clear();
        this.alarms.clear();
        this.kpis.clear();
        this.commands.clear();
        for (const a of frame.assets) this.assets.set(assetKey(a), a);
        for (const a of frame.alarms) if (!a.closed) this.alarms.set(a.key, a);
        for (const k of frame.kpis ?? []) this.kpis.set(`${k.domain}/${k.commune}`, k);
        for (const c of frame.commands ?? []) this.commands.set(c.id, c);
        for (const d of DOMAINS) this.dirtyDomains.add(d);
        this.seq = frame.seq;
        this.#snapshotSeen = true;
        this.#retryMs = 250;
        this.lastChangeAt = now;
        this.#live();
        this.#render(true);
        break;
      }
      case "delta":
        this.#applyDelta(frame);
        this.seq = frame.seq;
        this.lastChangeAt = now;
        this.#render(false);
        break;
      case "removed":
        // It left this session's scope: forget it (nothing says where it went).
        if (frame.asset) {
          this.assets.delete(assetKey(frame.asset));
          this.dirtyDomains.add(frame.asset.domain);
        }
        if (frame.alarm) this.alarms.delete(frame.alarm);
        this.seq = frame.seq;
        this.lastChangeAt = now;
        this.#render(false);
        break;
      case "resumed":
        this.resumed += 1;
        this.#retryMs = 250;
        this.#live();
        break;
      case "heartbeat":
        if (this.#lastHeartbeatAt > 0) {
          // The interval is learnt from the gateway (see lib/heartbeat).
          this.#gaps.push(now - this.#lastHeartbeatAt);
          if (this.#gaps.length > GAPS_KEPT) this.#gaps.shift();
          this.#heartbeatMs = heartbeatInterval(this.#gaps, DEFAULT_HEARTBEAT_MS);
        }
        this.#lastHeartbeatAt = now;
        this.notices = frame.notices ?? 0;
        this.upstream = frame.upstream;
        if (frame.upstream === "live") this.#live();
        else this.#notLive("stale");
        break;
      case "error":
        console.warn("gateway:", frame.code, frame.message);
        break;
      case "pong":
        break;
    }
  }

  #applyDelta(frame: Extract<ServerFrame, { type: "delta" }>) {
    if (frame.asset) {
      this.assets.set(assetKey(frame.asset), frame.asset);
      this.dirtyDomains.add(frame.asset.domain);
    }
    if (frame.alarm) {
      const alarm = frame.alarm;
      const before = this.alarms.get(alarm.key);
      // A cleared alarm stays until acknowledged; a closed one leaves.
      if (alarm.closed) this.alarms.delete(alarm.key);
      else this.alarms.set(alarm.key, alarm);
      const raisedAgain = !before || alarm.raise_count > before.raise_count || (!before.active && alarm.active);
      if (alarm.active && !alarm.closed && alarm.severity === "critical" && raisedAgain && this.link === "live") {
        this.onCriticalRaised(alarm);
      }
    }
    if (frame.kpi) this.kpis.set(`${frame.kpi.domain}/${frame.kpi.commune}`, frame.kpi);
    if (frame.command) this.commands.set(frame.command.id, frame.command);
  }

  #live() {
    if (this.upstream === "stale") return;
    this.link = "live";
  }

  #notLive(state: Link) {
    if (this.link === "live") this.liveUntil = Date.now();
    this.link = state;
  }

  #checkStale() {
    const silent = Date.now() - this.lastHeardAt;
    // A connection silent for this long is dead even if the network never said so (a cable cut
    // sends no FIN): drop it, and reconnect with resume.
    if (this.lastHeardAt > 0 && silent > this.#heartbeatMs * MISSED_HEARTBEATS_BEFORE_RECONNECT) {
      this.lastHeardAt = Date.now();
      // Detached first: its close handshake may never complete.
      const dead = this.#socket;
      this.#socket = null;
      dead?.close();
      if (this.link === "live") this.liveUntil = Date.now();
      this.link = "reconnecting";
      this.reconnects += 1;
      this.#connect();
      return;
    }
    if (this.link !== "live") return;
    if (silent > this.#heartbeatMs * MISSED_HEARTBEATS_BEFORE_STALE) this.#notLive("stale");
  }

  #render(now: boolean) {
    if (now) {
      this.version += 1;
      return;
    }
    if (this.#pendingRender) return;
    this.#pendingRender = true;
    setTimeout(() => {
      this.#pendingRender = false;
      this.version += 1;
    }, RENDER_EVERY_MS);
  }
}
