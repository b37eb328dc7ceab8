// Placeholder console: connects to the gateway's live protocol v1 (see docs/live-protocol.md),
// keeps the latest state of assets, active alarms and KPIs, and shows them. The full console
// (map, alarm workflow, log book) replaces it.

type Streetlight = {
  type: "streetlight";
  lamp_type: string;
  status: string | null;
  power_state: string | null;
  illuminance_level: number | null;
  power_consumption_w: number | null;
  faults?: string[];
};

type Vehicle = {
  type: "vehicle";
  label: string;
  trip_id: string;
  route_id: string;
  delay_s: number | null;
  offset_m: number;
};

type CitizenReport = {
  type: "report";
  service_request_id: string;
  service_name: string;
  status: string;
  detailed_status: string;
  address: string;
  duplicate_of: string;
  duplicate_count: number;
};

type WaterSensor = {
  type: "water_sensor";
  element_id: string;
  dma: string;
  measures: Record<string, { value: number; unit: string; observed_at: string }>;
  flags: string[];
};

type Asset = {
  domain: string;
  id: string;
  commune: string;
  observed_at: string;
  details: Streetlight | Vehicle | CitizenReport | WaterSensor;
};

type Alarm = {
  key: string;
  alarm_type: string;
  severity: string;
  commune: string;
  asset_id: string;
  asset_ids: string[];
  active: boolean;
  last_raised_at: string;
  raise_count: number;
  acknowledged?: boolean;
  closed?: boolean;
};

type Kpi = { domain: string; commune: string; at: string; values: Record<string, number> };

type ServerFrame =
  | { v: 1; type: "snapshot"; seq: number; assets: Asset[]; alarms: Alarm[]; kpis?: Kpi[] }
  | { v: 1; type: "delta"; seq: number; asset?: Asset; alarm?: Alarm; kpi?: Kpi }
  | { v: 1; type: "resumed"; from: number }
  | { v: 1; type: "heartbeat"; seq: number; upstream: "live" | "stale" }
  | { v: 1; type: "pong" }
  | { v: 1; type: "error"; code: string; message: string };

const REPORT_FR: Record<string, string> = {
  open: "Ouvert",
  confirmed: "Confirmé",
  investigating: "En cours d'examen",
  action_scheduled: "Intervention programmée",
  in_progress: "En cours",
  fixed: "Résolu",
  closed: "Clos",
  duplicate: "Doublon",
  not_responsible: "Hors compétence",
};

const SHOWN = 150;
const assets = new Map<string, Asset>();
const alarms = new Map<string, Alarm>();
const kpis = new Map<string, Kpi>();
let lastSeq = 0;
let dirty = false;

const link = document.getElementById("link")!;
const counts = document.getElementById("counts")!;
const tbody = document.getElementById("assets")!;
const alarmBody = document.getElementById("alarms")!;

function setLink(state: "connecting" | "live" | "stale" | "reconnecting") {
  link.dataset.state = state;
  link.textContent = {
    connecting: "Connexion…",
    live: "En direct",
    stale: "Données possiblement figées",
    reconnecting: "Reconnexion…",
  }[state];
}

// The gateway sends a heartbeat every few seconds; without one for this long the data is stale.
const STALE_AFTER_MS = 15_000;
let lastHeard = Date.now();

const STATUS_FR: Record<string, string> = {
  ok: "En service",
  defectiveLamp: "Lampe défectueuse",
  brokenLantern: "Lanterne cassée",
  columnIssue: "Support endommagé",
};
const POWER_FR: Record<string, string> = { on: "Allumé", off: "Éteint", low: "Abaissé", bootingUp: "Allumage" };
const ALARM_FR: Record<string, string> = {
  lamp_failure: "Lampe en panne",
  outage_cluster: "Secteur éteint",
  dimming_failure: "Défaut de gradation",
  low_power_factor: "Facteur de puissance bas",
  lamp_on_in_daytime: "Allumé en journée",
  late: "Véhicule en retard",
  off_route: "Hors itinéraire",
  bunching: "Véhicules groupés",
  gap: "Intervalle trop long",
  not_reporting: "Véhicule muet",
  burst: "Casse de canalisation",
  leak_suspected: "Fuite suspectée",
  tank_low: "Réservoir bas",
  tank_high: "Réservoir haut",
  quality_breach: "Qualité de l'eau hors limites",
  sensor_out_of_range: "Capteur hors plage",
  sensor_frozen: "Capteur figé",
  sensor_silent: "Capteur muet",
};
const MEASURE_FR: Record<string, string> = {
  pressure: "Pression",
  flow: "Débit",
  level: "Niveau",
  freeChlorine: "Chlore libre",
  turbidity: "Turbidité",
  pH: "pH",
  conductivity: "Conductivité",
  temperature: "Température",
};
const SEVERITY_FR: Record<string, string> = { critical: "Critique", major: "Majeure", minor: "Mineure", warning: "Avertissement" };
const SEVERITY_RANK: Record<string, number> = { critical: 0, major: 1, minor: 2, warning: 3 };

function cell(text: string, className?: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function time(iso: string): string {
  return new Date(iso).toLocaleTimeString("fr-FR");
}

function render() {
  dirty = false;
  const sortedAlarms = [...alarms.values()].sort(
    (a, b) => (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9) || (a.last_raised_at < b.last_raised_at ? 1 : -1),
  );
  alarmBody.replaceChildren(
    ...sortedAlarms.slice(0, SHOWN).map((a) => {
      const tr = document.createElement("tr");
      tr.className = `severity-${a.severity}`;
      const lamps = a.asset_ids.length > 1 ? ` (${a.asset_ids.length} points lumineux)` : "";
      tr.append(
        cell(SEVERITY_FR[a.severity] ?? a.severity),
        cell((ALARM_FR[a.alarm_type] ?? a.alarm_type) + lamps + (a.active ? "" : " (terminée, à acquitter)")),
        cell(a.commune),
        cell(a.asset_id),
        cell(String(a.raise_count)),
        cell(time(a.last_raised_at)),
      );
      return tr;
    }),
  );
  const recent = [...assets.values()].sort((a, b) => (a.observed_at < b.observed_at ? 1 : -1)).slice(0, SHOWN);
  tbody.replaceChildren(
    ...recent.map((a) => {
      const tr = document.createElement("tr");
      if (a.details.type === "vehicle") {
        const v = a.details;
        const delay = v.delay_s === null ? "—" : `${v.delay_s >= 0 ? "+" : "−"}${Math.round(Math.abs(v.delay_s) / 60)} min`;
        if (v.delay_s !== null && v.delay_s > 300) tr.className = "fault";
        tr.append(
          cell(`${a.id} (ligne ${v.route_id}, course ${v.trip_id})`),
          cell(a.commune),
          cell(`Retard ${delay}`),
          cell("—"),
          cell("—"),
          cell("—"),
          cell(time(a.observed_at)),
        );
        return tr;
      }
      if (a.details.type === "water_sensor") {
        const w = a.details;
        if (w.flags.length > 0) tr.className = "fault";
        const values = Object.entries(w.measures)
          .map(([m, v]) => `${MEASURE_FR[m] ?? m} ${v.value} ${v.unit}`)
          .join(" · ");
        tr.append(
          cell(`Capteur ${a.id} (${w.element_id}, ${w.dma || "hors secteur"})`),
          cell(a.commune),
          cell(values || "—"),
          cell(w.flags.join(", ") || "—"),
          cell("—"),
          cell("—"),
          cell(time(a.observed_at)),
        );
        return tr;
      }
      if (a.details.type === "report") {
        const r = a.details;
        if (r.status === "open" && !r.duplicate_of) tr.className = "fault";
        const duplicates = r.duplicate_count > 0 ? ` · ${r.duplicate_count} doublon(s)` : "";
        tr.append(
          cell(`Signalement ${r.service_request_id} (${r.service_name})`),
          cell(a.commune),
          cell((REPORT_FR[r.detailed_status] ?? r.detailed_status) + duplicates),
          cell(r.address || "—"),
          cell("—"),
          cell("—"),
          cell(time(a.observed_at)),
        );
        return tr;
      }
      const d = a.details;
      if ((d.status && d.status !== "ok") || (d.faults && d.faults.length > 0)) tr.className = "fault";
      tr.append(
        cell(d.lamp_type ? `${a.id} (${d.lamp_type})` : a.id),
        cell(a.commune),
        cell(d.status ? (STATUS_FR[d.status] ?? d.status) : "—"),
        cell(d.power_state ? (POWER_FR[d.power_state] ?? d.power_state) : "—"),
        cell(d.illuminance_level === null ? "—" : `${Math.round(d.illuminance_level * 100)} %`),
        cell(d.power_consumption_w === null ? "—" : d.power_consumption_w.toFixed(0)),
        cell(time(a.observed_at)),
      );
      return tr;
    }),
  );
  let total = 0;
  let dark = 0;
  let power = 0;
  for (const k of kpis.values()) {
    if (k.domain !== "lighting") continue;
    total += k.values.lamps_total ?? 0;
    dark += k.values.lamps_dark ?? 0;
    power += k.values.power_w ?? 0;
  }
  const availability = total > 0 ? `${(((total - dark) / total) * 100).toFixed(2)} %` : "—";
  let vehicles = 0;
  let withAdherence = 0;
  let onTime = 0;
  for (const k of kpis.values()) {
    if (k.domain !== "transport") continue;
    vehicles += k.values.vehicles ?? 0;
    withAdherence += k.values.with_adherence ?? 0;
    onTime += k.values.on_time ?? 0;
  }
  const punctuality = withAdherence > 0 ? `${Math.round((onTime / withAdherence) * 100)} %` : "—";
  let leaks = 0;
  let bursts = 0;
  for (const k of kpis.values()) {
    if (k.domain !== "water") continue;
    leaks += k.values.active_leaks ?? 0;
    bursts += k.values.active_bursts ?? 0;
  }
  counts.textContent =
    `${assets.size} équipements · ${[...alarms.values()].filter((a) => a.active).length} alarmes actives · éclairage disponible ${availability}` +
    ` · ${(power / 1000).toFixed(0)} kW · ${vehicles} véhicules en ligne, ponctualité ${punctuality}` +
    ` · eau : ${leaks} fuite(s) suspectée(s), ${bursts} casse(s)` +
    ` · séquence ${lastSeq}`;
}

function connect(delayMs: number) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // After a network loss, ask for what was missed since the last sequence seen.
  const resume = lastSeq > 0 ? `?resume_from=${lastSeq}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${resume}`);
  socket.onmessage = (message) => {
    lastHeard = Date.now();
    const frame = JSON.parse(message.data as string) as ServerFrame;
    if (frame.type === "snapshot") {
      assets.clear();
      alarms.clear();
      kpis.clear();
      for (const a of frame.assets) assets.set(`${a.domain}/${a.id}`, a);
      for (const a of frame.alarms) alarms.set(a.key, a);
      for (const k of frame.kpis ?? []) kpis.set(`${k.domain}/${k.commune}`, k);
      lastSeq = frame.seq;
      setLink("live");
    } else if (frame.type === "delta") {
      if (frame.asset) assets.set(`${frame.asset.domain}/${frame.asset.id}`, frame.asset);
      if (frame.alarm) {
        // A cleared alarm stays until acknowledged; a closed one leaves.
        if (frame.alarm.closed) alarms.delete(frame.alarm.key);
        else alarms.set(frame.alarm.key, frame.alarm);
      }
      if (frame.kpi) kpis.set(`${frame.kpi.domain}/${frame.kpi.commune}`, frame.kpi);
      lastSeq = frame.seq;
    } else if (frame.type === "resumed") {
      setLink("live");
    } else if (frame.type === "heartbeat") {
      setLink(frame.upstream === "live" ? "live" : "stale");
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
setInterval(() => {
  if (link.dataset.state === "live" && Date.now() - lastHeard > STALE_AFTER_MS) setLink("stale");
}, 1000);
