// The heartbeat interval the console learns (src/lib/heartbeat.ts).
import { test } from "vitest";
import assert from "node:assert/strict";
import { heartbeatInterval } from "../../src/lib/heartbeat.ts";

test("frames that arrive back to back after a busy moment do not shrink the interval", () => {
  assert.equal(heartbeatInterval([1000, 1002, 60, 998, 1001], 5000), 1000);
  assert.equal(heartbeatInterval([60, 1000], 5000), 5000, "too few gaps: the default");
  assert.equal(heartbeatInterval([300, 310, 290], 5000), 300);
});
