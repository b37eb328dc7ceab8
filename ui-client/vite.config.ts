import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The gateway serves dist/; in development, Vite proxies the API and the WebSocket to a local
// gateway (deploy/run.sh starts one on 127.0.0.1:8080).
export default defineConfig({
  plugins: [svelte()],
  server: {
    proxy: {
      "/ws": { target: "ws://127.0.0.1:8080", ws: true },
      "/api": { target: "http://127.0.0.1:8080" },
    },
  },
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1500 },
});
