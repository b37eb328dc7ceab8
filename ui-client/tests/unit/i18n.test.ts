// Every domain term has its English; the interface's keys are checked by the type of EN.
import { test } from "vitest";
import assert from "node:assert/strict";
import { TERMS_EN, TERMS_FR, i18n, t } from "../../src/lib/i18n.svelte";

test("every French term has an English one, and no English term lacks its French", () => {
  const missing = Object.keys(TERMS_FR).filter((k) => !(k in TERMS_EN));
  const orphans = Object.keys(TERMS_EN).filter((k) => !(k in TERMS_FR));
  assert.deepEqual(missing, [], "terms without English");
  assert.deepEqual(orphans, [], "English terms without French");
});

test("counts agree with their number: French makes 0 and 1 singular, English only 1", () => {
  const counts = (active: number) => t("counts", { active, unack: active, critical: active });
  i18n.lang = "fr";
  assert.equal(counts(0), "0 active · 0 non acquittée · 0 critique");
  assert.equal(counts(1), "1 active · 1 non acquittée · 1 critique");
  assert.equal(counts(2), "2 actives · 2 non acquittées · 2 critiques");
  assert.equal(t("assets_count", { n: 1500 }), "1500 équipements");
  i18n.lang = "en";
  assert.equal(t("assets_count", { n: 0 }), "0 assets");
  assert.equal(t("assets_count", { n: 1 }), "1 asset");
  assert.equal(t("vehicles_in_service", { n: 2 }), "2 vehicles in service");
  i18n.lang = "fr";
});
