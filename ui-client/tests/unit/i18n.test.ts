// Every domain term has its English; the interface's keys are checked by the type of EN.
import { test } from "vitest";
import assert from "node:assert/strict";
import { TERMS_EN, TERMS_FR } from "../../src/lib/i18n.svelte";

test("every French term has an English one, and no English term lacks its French", () => {
  const missing = Object.keys(TERMS_FR).filter((k) => !(k in TERMS_EN));
  const orphans = Object.keys(TERMS_EN).filter((k) => !(k in TERMS_FR));
  assert.deepEqual(missing, [], "terms without English");
  assert.deepEqual(orphans, [], "English terms without French");
});
