// The shared rule data in this engine (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Redactor } from "../dist/redaction.js";

test("64 KiB of one keyword repeated is redacted in linear time (RegExp backtracks)", () => {
  // Attack: gitleaks' curl rules scan up to six lines after `curl`; a backtracking engine
  // retried from every occurrence (quadratic: 4 s of CPU for one 64 KiB string).
  const redactor = new Redactor();
  for (const unit of ["curl" + " ".repeat(40), "curl -H ", "curl -u ", "mysql" + "\t".repeat(40)]) {
    const flood = unit.repeat(Math.floor(65536 / unit.length)).slice(0, 60000) + "x".repeat(5000);
    const started = process.cpuUsage();
    redactor.redactString(flood);
    const spent = process.cpuUsage(started);
    assert.ok(spent.user + spent.system < 500_000, `${JSON.stringify(unit)}: ${spent.user} µs`);
    const bearer = "Zq8vR2kLm4Tn6Wp1";
    const text = `${flood}\ncurl -H 'Authorization: Bearer ${bearer}' https://x.test/`;
    assert.ok(!redactor.redactString(text).includes(bearer));
  }
});
