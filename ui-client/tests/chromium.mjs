// How the browser tests start Debian's Chromium (playwright-core): the console's scenarios
// (console.test.mjs) and the benchmark's first load (first-load.mjs).
// Without the network flags, Chromium tries the network at every start (this machine has none).
// WebGL (MapLibre) runs on SwiftShader, Chromium's software renderer.
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--enable-unsafe-swiftshader",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
