// What the operator has chosen: the commune in view, the selected asset or alarm, the alarm
// filters, the visible layers. Shared by the map, the lists and the panels, so that a selection
// in one shows in the others.

export type AlarmState = "attention" | "all" | "active" | "unacknowledged" | "cleared" | "shelved";
export type AlarmSort = "severity" | "recent" | "commune";

export const ui = $state({
  /// The commune in view ("" = all of the operator's communes).
  commune: "",
  /// `domain/id` of the selected asset, or "".
  selectedAsset: "",
  /// Key of the selected alarm, or "".
  selectedAlarm: "",
  /// A street picked on the map (its name, in the commune it was picked in), or null.
  selectedStreet: null as { name: string; commune: string } | null,
  /// The operator is drawing a zone on the map (each click a corner).
  drawing: false,
  /// A zone drawn on the map (a closed ring), or null.
  zone: null as { lat: number; lon: number }[] | null,
  /// Alarm keys ticked for a multiple acknowledgement.
  ticked: [] as string[],
  filters: { domain: "", severity: "", state: "attention" as AlarmState, commune: "" },
  /// An alarm flood goes on (see lib/alarms `flooding`; the console updates it every second).
  flooding: false,
  /// Groups of the alarm list opened by the operator (type@commune), during a flood.
  expanded: [] as string[],
  sort: "severity" as AlarmSort,
  layers: { transport: true, lighting: true, water: true, reports: true, streets: true, dmas: true },
  panel: "alarms" as "alarms" | "logbook",
  /// Incremented to ask the map to fly to the selection.
  flyTo: 0,
  help: false,
});
