// The console's live connection (src/lib/live.svelte.ts) against a fake WebSocket and fake
// timers: staleness when heartbeats stop, reconnection that resumes from the last sequence, a
// token refreshed on 4001, a session ended on 4003, the wait a 4029 asks for.
import { afterEach, beforeEach, test, vi } from "vitest";
import assert from "node:assert/strict";

const auth = vi.hoisted(() => ({ current: "T1", refreshed: 0, ended: 0 }));
vi.mock("../../src/lib/auth.svelte", () => ({
  token: () => auth.current,
  refresh: async () => {
    auth.refreshed += 1;
    auth.current = `T${auth.refreshed + 1}`;
  },
  end: () => {
    auth.ended += 1;
  },
}));

import { LiveState, retryAfterMs } from "../../src/lib/live.svelte.ts";

/// A WebSocket that records how it was opened and lets the test play the gateway.
class FakeSocket {
  static opened: FakeSocket[] = [];
  onmessage: ((m: { data: string }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  closed = false;
  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {
    FakeSocket.opened.push(this);
  }
  close() {
    this.closed = true;
  }
  /// The gateway sends a frame.
  frame(frame: object) {
    this.onmessage?.({ data: JSON.stringify({ v: 1, ...frame }) });
  }
  /// The gateway (or the network) closes the connection.
  drop(code: number, reason = "") {
    this.onclose?.({ code, reason });
  }
}

const last = () => FakeSocket.opened[FakeSocket.opened.length - 1];
const lamp = (id: string, level: number) => ({
  domain: "lighting",
  id,
  commune: "34172",
  observed_at: "2026-12-06T03:00:00Z",
  details: { kind: "streetlight", illuminance_level: level },
});
const snapshot = (seq: number) => ({ type: "snapshot", seq, assets: [lamp("EP1", 0.5)], alarms: [], kpis: [] });
const heartbeat = (seq: number, upstream = "live") => ({ type: "heartbeat", seq, upstream, notices: 0 });

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date("2026-12-06T03:00:00Z"));
  FakeSocket.opened = [];
  Object.assign(auth, { current: "T1", refreshed: 0, ended: 0 });
  vi.stubGlobal("WebSocket", FakeSocket);
});

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

function started(): LiveState {
  const live = new LiveState(new URL("http://console.test/"));
  live.start(["34172"]);
  return live;
}

test("the token travels as a subprotocol, never in the URL", () => {
  const live = started();
  assert.equal(FakeSocket.opened.length, 1);
  assert.deepEqual(last().protocols, ["vigie.v1", "bearer.T1"]);
  assert.ok(!last().url.includes("T1"), last().url);
  assert.equal(new URL(last().url).searchParams.get("communes"), "34172");
  assert.equal(live.link, "connecting");
  live.stop();
});

test("silent heartbeats make the view stale, then a reconnection resumes from the last sequence", () => {
  const live = started();
  last().frame(snapshot(40));
  assert.equal(live.link, "live");
  // Heartbeats every second: the interval is learnt.
  for (let seq = 41; seq <= 44; seq++) {
    vi.advanceTimersByTime(1000);
    last().frame(heartbeat(seq));
  }
  last().frame({ type: "delta", seq: 45, asset: lamp("EP1", 0.9) });
  assert.equal(live.seq, 45);
  // Nothing for over three intervals (checked each second): stale, and what is shown keeps its age.
  vi.advanceTimersByTime(4_500);
  assert.equal(live.link, "stale");
  assert.ok(live.liveUntil > 0);
  assert.equal(FakeSocket.opened.length, 1, "not yet dropped");
  // Six intervals: the connection is dead whatever the network says; a new one resumes.
  vi.advanceTimersByTime(3_000);
  assert.equal(live.link, "reconnecting");
  assert.equal(FakeSocket.opened.length, 2);
  assert.ok(FakeSocket.opened[0].closed, "the dead socket is closed");
  assert.equal(new URL(last().url).searchParams.get("resume_from"), "45");
  // The gateway resumes: live again, without a fresh snapshot (nothing reloaded).
  last().frame({ type: "resumed", seq: 45 });
  assert.equal(live.link, "live");
  assert.equal(live.resumed, 1);
  assert.equal((live.assets.get("lighting/EP1")?.details as { illuminance_level: number }).illuminance_level, 0.9);
  live.stop();
});

test("a gateway cut from the event stream is shown stale, and live again once it is back", () => {
  const live = started();
  last().frame(snapshot(1));
  last().frame(heartbeat(1, "stale"));
  assert.equal(live.link, "stale");
  assert.equal(live.upstream, "stale");
  // A frame during the cut does not pretend to be live.
  last().frame({ type: "delta", seq: 2, asset: lamp("EP1", 0.1) });
  assert.equal(live.link, "stale");
  last().frame(heartbeat(2, "live"));
  assert.equal(live.link, "live");
  live.stop();
});

test("an expired token is refreshed, then the session resumes at once with the new one", async () => {
  const live = started();
  last().frame(snapshot(7));
  last().drop(4001, "token expired");
  assert.equal(live.link, "reconnecting");
  await vi.advanceTimersByTimeAsync(0);
  assert.equal(auth.refreshed, 1);
  assert.equal(FakeSocket.opened.length, 2);
  assert.deepEqual(last().protocols, ["vigie.v1", "bearer.T2"]);
  assert.equal(new URL(last().url).searchParams.get("resume_from"), "7");
  live.stop();
});

test("a revoked session ends, and nothing reconnects", async () => {
  const live = started();
  last().frame(snapshot(3));
  last().drop(4003, "revoked");
  await vi.advanceTimersByTimeAsync(10_000);
  assert.equal(auth.ended, 1);
  assert.equal(FakeSocket.opened.length, 1);
  live.stop();
});

test("too many snapshots: the client waits as long as the gateway asks, backing off otherwise", async () => {
  assert.equal(retryAfterMs(4029, "too many snapshots: retry in 7 s"), 7000);
  assert.equal(retryAfterMs(1006, ""), null);
  const live = started();
  last().drop(4029, "too many snapshots: retry in 7 s");
  await vi.advanceTimersByTimeAsync(6_900);
  assert.equal(FakeSocket.opened.length, 1, "not before the time asked");
  await vi.advanceTimersByTimeAsync(200);
  assert.equal(FakeSocket.opened.length, 2);
  // Closed again at once (1000, no snapshot seen): the delay doubles from 500 ms.
  last().drop(1000);
  await vi.advanceTimersByTimeAsync(400);
  assert.equal(FakeSocket.opened.length, 2);
  await vi.advanceTimersByTimeAsync(200);
  assert.equal(FakeSocket.opened.length, 3);
  assert.equal(new URL(last().url).searchParams.get("resume_from"), null, "no snapshot yet: nothing to resume");
  live.stop();
});

test("a snapshot in several frames replaces the view once its last frame arrives", () => {
  const live = started();
  last().frame(snapshot(10));
  assert.deepEqual([...live.assets.keys()].length, 1);
  // A resync in three frames: nothing changes until the last one.
  const part = (ids: string[], more: boolean) => ({
    type: "snapshot",
    seq: 20,
    assets: ids.map((id) => lamp(id, 0.3)),
    alarms: [],
    commands: [],
    kpis: [],
    ...(more ? { more: true } : {}),
  });
  last().frame(part(["EP2", "EP3"], true));
  last().frame(part(["EP4"], true));
  assert.equal(live.seq, 10, "not applied before its last frame");
  assert.equal(live.assets.size, 1);
  last().frame(part(["EP5"], false));
  assert.equal(live.seq, 20);
  assert.deepEqual([...live.assets.values()].map((a) => a.id).sort(), ["EP2", "EP3", "EP4", "EP5"]);
  // Deltas follow as usual.
  last().frame({ type: "delta", seq: 21, asset: lamp("EP2", 0.9) });
  assert.equal(live.seq, 21);
  // A connection lost in the middle of a snapshot: its first frames are forgotten, even when the
  // next connection's snapshot has the same seq (nothing was applied meanwhile).
  last().frame(part(["EP6"], true));
  last().drop(1001);
  vi.advanceTimersByTime(5_000);
  assert.equal(FakeSocket.opened.length, 2);
  last().frame(part(["EP7"], false));
  assert.deepEqual([...live.assets.values()].map((a) => a.id), ["EP7"]);
  live.stop();
});

test("after 1012 (the gateway replaced its view) the console asks for a fresh snapshot, not a resume", () => {
  const live = started();
  last().frame(snapshot(10));
  last().frame({ type: "delta", seq: 11, asset: lamp("EP1", 0.9) });
  last().drop(1012, "the view was rebuilt; reconnect");
  vi.advanceTimersByTime(5_000);
  assert.equal(FakeSocket.opened.length, 2);
  assert.equal(new URL(last().url).searchParams.get("resume_from"), null);
  live.stop();
});
