// Console smoke test in a real browser: playwright-core drives Debian's Chromium against a running
// gateway. Started by the Rust end-to-end test `console_in_a_browser` (tests/tests/e2e), which
// starts NATS, the lighting service and the gateway, feeds them, and passes:
//   VIGIE_URL        the gateway's base URL
//   VIGIE_ARTIFACTS  a folder for screenshots
//   VIGIE_EXPECT     JSON: {"assets": n, "alarm_type": "...", "asset": "..."}
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = process.env.VIGIE_URL;
const artifacts = process.env.VIGIE_ARTIFACTS ?? "test-artifacts";
const expected = JSON.parse(process.env.VIGIE_EXPECT ?? "{}");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

// Without these, Chromium tries the network at every start (this machine has none).
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

test("the console shows live assets and the active alarms, in French", { skip: !url && "VIGIE_URL is not set" }, async () => {
  mkdirSync(artifacts, { recursive: true });
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, locale: "fr-FR" });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    await page.waitForSelector('#link[data-state="live"]', { timeout: 10_000 });
    assert.equal(await page.textContent("#link"), "En direct");
    await page.waitForFunction(
      (n) => document.querySelector("#counts")?.textContent?.startsWith(`${n} équipements`),
      expected.assets,
      { timeout: 10_000 },
    );
    // The alarm raised by the test reaches the alarm list, with its French label.
    const row = page.locator("#alarms tr", { hasText: expected.asset });
    await row.waitFor({ timeout: 10_000 });
    assert.match(await row.textContent(), new RegExp(expected.alarm_label));
    await page.screenshot({ path: join(artifacts, "console-live.png"), fullPage: true });
    assert.deepEqual(errors, [], "no script error on the page");
  } finally {
    await browser.close();
  }
});
