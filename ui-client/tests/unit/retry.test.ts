import { describe, expect, it } from "vitest";
import { retryAfterMs } from "../../src/lib/live.svelte";

describe("how long a close asks to wait", () => {
  it("reads the gateway's reason for too many snapshots", () => {
    expect(retryAfterMs(4029, "too many snapshots for this login: retry in 3 s")).toBe(3000);
    expect(retryAfterMs(4029, "")).toBe(2000);
  });
  it("says nothing for other closes", () => {
    expect(retryAfterMs(4002, "retry in 3 s")).toBeNull();
    expect(retryAfterMs(1006, "")).toBeNull();
  });
});
