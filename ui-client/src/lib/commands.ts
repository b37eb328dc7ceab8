// A command in words, the same in the command lists and in the log book: « Varier à 30 % »,
// « Fermer la vanne p346 ». The log book holds the target and the action as JSON; the live view
// as objects of the same shape.
import type { Command } from "./protocol";
import { t } from "./i18n.svelte";

type Action = { type?: unknown; on?: unknown; level?: unknown; operation?: unknown };
type Target = { type?: unknown; link_id?: unknown };

/// What the command does, with its valve named (a valve's action is its target).
export function describeAction(action: Action | null | undefined, target?: Target | null): string {
  if (!action) return "";
  if (action.type === "switch") return action.on ? t("act_switch_on") : t("act_switch_off");
  if (action.type === "dim") return t("act_dim_to", { level: Math.round(Number(action.level ?? 0) * 100) });
  if (action.type === "operate_valve") {
    const link = target?.link_id === undefined ? "" : String(target.link_id);
    return action.operation === "open" ? t("valve_open_link", { link }) : t("valve_close_link", { link });
  }
  return "";
}

/// Lamps applied out of the whole, for a command that spans several.
export function progress(c: Command): string {
  const total = c.lamps_total ?? 0;
  return total > 1 ? ` · ${c.lamps_applied ?? 0}/${total}` : "";
}

/// The most recent first, at most `n`.
export function latest(commands: Iterable<Command>, mine: (c: Command) => boolean, n: number): Command[] {
  return [...commands].filter(mine).sort((x, y) => y.requested_at.localeCompare(x.requested_at)).slice(0, n);
}
