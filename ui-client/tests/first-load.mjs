// The console's first load, measured in a real browser (playwright-core driving Debian's
// Chromium, WebGL on SwiftShader): run by the benchmark (`vigie-bench`, its scaling table) against
// a gateway serving the built console. It logs in and prints one JSON line of figures:
//   first_contentful_paint_ms  the login page's first contentful paint, from navigation
//   live_ms                    from the login's click to the link shown live (snapshot applied)
//   assets_drawn_ms            from the click to the streetlights' first features on the map
//   map_idle_ms                from the click to the map idle: every tile drawn, no camera move
//   snapshot_bytes, snapshot_frames, assets, alarms   the snapshot as it came over the socket
//   heap_bytes                 the page's JavaScript heap after the load
// Environment: VIGIE_URL (the gateway's base URL), VIGIE_LOGIN, VIGIE_PASSWORD, CHROMIUM_PATH.
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS } from "./chromium.mjs";

const url = process.env.VIGIE_URL;
const login = process.env.VIGIE_LOGIN;
const password = process.env.VIGIE_PASSWORD;
if (!url || !login || !password) {
  console.error("VIGIE_URL, VIGIE_LOGIN and VIGIE_PASSWORD must be set (run by vigie-bench)");
  process.exit(2);
}

// The console's end-to-end test's flags (no network at start, software WebGL), and the heap's
// exact size.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: [...CHROMIUM_ARGS, "--enable-precise-memory-info"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1600, height: 900 }, locale: "fr-FR" });
  const page = await context.newPage();
  const snapshot = { bytes: 0, frames: 0, assets: 0, alarms: 0, done: false };
  page.on("websocket", (ws) => {
    ws.on("framereceived", ({ payload }) => {
      if (snapshot.done || typeof payload !== "string") return;
      const frame = JSON.parse(payload);
      if (frame.type !== "snapshot") return;
      snapshot.bytes += Buffer.byteLength(payload);
      snapshot.frames += 1;
      snapshot.assets += frame.assets.length;
      snapshot.alarms += frame.alarms.length;
      snapshot.done = !frame.more;
    });
  });

  await page.goto(url);
  await page.waitForSelector("#login-submit");
  const fcp = await page.evaluate(
    () => performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? Number.NaN,
  );
  await page.fill("#login-name", login);
  await page.fill("#login-password", password);
  const clicked = Date.now();
  await page.click("#login-submit");
  const timeout = 120_000;
  await page.waitForSelector('#link[data-state="live"]', { timeout });
  const live = Date.now() - clicked;
  await page.waitForFunction(() => (window.vigieMap?.querySourceFeatures("lighting").length ?? 0) > 0, null, {
    timeout,
    polling: 20,
  });
  const drawn = Date.now() - clicked;
  await page.waitForFunction(() => window.vigieMap?.loaded() && !window.vigieMap.isMoving(), null, {
    timeout,
    polling: 20,
  });
  const idle = Date.now() - clicked;
  const heap = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? Number.NaN);
  if (!snapshot.done) throw new Error("the snapshot's last frame never came");
  console.log(
    JSON.stringify({
      first_contentful_paint_ms: fcp,
      live_ms: live,
      assets_drawn_ms: drawn,
      map_idle_ms: idle,
      snapshot_bytes: snapshot.bytes,
      snapshot_frames: snapshot.frames,
      assets: snapshot.assets,
      alarms: snapshot.alarms,
      heap_bytes: heap,
    }),
  );
} finally {
  await browser.close();
}
