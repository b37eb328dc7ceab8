// Placeholder console: connects to the gateway's live protocol v1 (see docs/live-protocol.md),
// keeps the latest state of every asset, and lists the most recently observed ones.

type Streetlight = {
  type: "streetlight";
  lamp_type: string;
  status: string | null;
  power_state: string | null;
  illuminance_level: number | null;
  power_consumption_w: number | null;
};

type Asset = {
  domain: string;
  id: string;
  commune: string;
  observed_at: string;
  details: Streetlight;
};

type ServerFrame =
  | { v: 1; type: "snapshot"; seq: number; assets: Asset[] }
  | { v: 1; type: "delta"; seq: number; asset: Asset }
  | { v: 1; type: "pong" }
  | { v: 1; type: "error"; code: string; message: string };

const SHOWN = 200;
const assets = new Map<string, Asset>();
let lastSeq = 0;
let dirty = false;

const link = document.getElementById("link")!;
const counts = document.getElementById("counts")!;
const tbody = document.getElementById("assets")!;

function setLink(state: "connecting" | "live" | "reconnecting") {
  link.dataset.state = state;
  link.textContent = { connecting: "Connexion…", live: "En direct", reconnecting: "Reconnexion…" }[state];
}

const STATUS_FR: Record<string, string> = {
  ok: "En service",
  defectiveLamp: "Lampe défectueuse",
  brokenLantern: "Lanterne cassée",
  columnIssue: "Support endommagé",
};
const POWER_FR: Record<string, string> = { on: "Allumé", off: "Éteint", low: "Abaissé", bootingUp: "Allumage" };

function cell(text: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function render() {
  dirty = false;
  const recent = [...assets.values()].sort((a, b) => (a.observed_at < b.observed_at ? 1 : -1)).slice(0, SHOWN);
  const rows = recent.map((a) => {
    const d = a.details;
    const tr = document.createElement("tr");
    if (d.status && d.status !== "ok") tr.className = "fault";
    tr.append(
      cell(`${a.id} (${d.lamp_type || "?"})`),
      cell(a.commune),
      cell(d.status ? (STATUS_FR[d.status] ?? d.status) : "—"),
      cell(d.power_state ? (POWER_FR[d.power_state] ?? d.power_state) : "—"),
      cell(d.illuminance_level === null ? "—" : `${Math.round(d.illuminance_level * 100)} %`),
      cell(d.power_consumption_w === null ? "—" : d.power_consumption_w.toFixed(0)),
      cell(new Date(a.observed_at).toLocaleTimeString("fr-FR")),
    );
    return tr;
  });
  tbody.replaceChildren(...rows);
  counts.textContent = `${assets.size} équipements · séquence ${lastSeq}`;
}

function connect(delayMs: number) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onmessage = (message) => {
    const frame = JSON.parse(message.data as string) as ServerFrame;
    if (frame.type === "snapshot") {
      assets.clear();
      for (const a of frame.assets) assets.set(`${a.domain}/${a.id}`, a);
      lastSeq = frame.seq;
      setLink("live");
    } else if (frame.type === "delta") {
      assets.set(`${frame.asset.domain}/${frame.asset.id}`, frame.asset);
      lastSeq = frame.seq;
    } else if (frame.type === "error") {
      console.warn("gateway:", frame.code, frame.message);
    }
    dirty = true;
  };
  socket.onclose = () => {
    setLink("reconnecting");
    setTimeout(() => connect(Math.min(delayMs * 2, 5000)), delayMs);
  };
}

setLink("connecting");
connect(250);
setInterval(() => dirty && render(), 250);
