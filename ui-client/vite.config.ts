import { defineConfig } from "vite";

// The gateway serves dist/; in development, Vite proxies the WebSocket to a local gateway.
export default defineConfig({
  server: {
    proxy: { "/ws": { target: "ws://127.0.0.1:8080", ws: true } },
  },
  build: { outDir: "dist", emptyOutDir: true },
});
