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

test("64 KiB of a pair, flag, XML, YAML, URL or encoded-run shape repeated is redacted in linear time", () => {
  // Attack: the rules ported from service/redaction.py (issue 26) scan from a name, a flag, a
  // tag, a "scheme://user:" or a "%25" onward; retried from each occurrence of a shape, a
  // backtracking scan is quadratic (Python's URL-password expression: 22 s of CPU for 64 KiB
  // of "a://b:"). A secret after the flood is still found.
  const redactor = new Redactor(["ssn"]);
  const units = [
    ...["a://b:", "a://b:@", "x://u:p", "a%3A%2F%2Fb%3A", "a%253A%252F%252Fb%253A", "%2541", "%40"],
    ...["--password ", " -password", "-p ", '["password", ', "('token', ", "<password>", "</password>"],
    ...["<a><![CDATA[", '"name": "password", "value": ', '"value": "x", "name": ', "name=password&value="],
    ...["password:\n", "password:\\n", "key: \n  - ", "password:\n" + "\r".repeat(10), '"field": "password", "old": '],
  ];
  for (const unit of units) {
    const flood = unit.repeat(Math.floor(65536 / unit.length)).slice(0, 60000) + "x".repeat(5000);
    const started = process.cpuUsage();
    redactor.redactString(flood);
    const spent = process.cpuUsage(started);
    assert.ok(spent.user + spent.system < 500_000, `${JSON.stringify(unit)}: ${spent.user} µs`);
    const secret = "Zq8vR2kLm4Tn6Wp1";
    const text = `${flood}\npg_dump --password ${secret} prod`;
    assert.ok(!redactor.redactString(text).includes(secret), JSON.stringify(unit));
  }
});

test("64 KiB of a word an id's hex digits spell, or of digits, is pre-checked in linear time", () => {
  // Attack: a hex word ("acca", "a3-") outside a UUID is looked up around each match, and a
  // card shape is searched for again after each; a lookup that scanned back to the string's
  // start at each match would be quadratic. A secret after the flood is still flagged.
  const redactor = new Redactor();
  const uuid = "01890a5d-ac96-774b-bcce-b302099a8057";
  const units = ["acca", "a3-", "4b1d", "eaac", "2fa", `"${uuid}",`, "2345678", "2345-6789-"];
  for (const unit of units) {
    const flood = unit.repeat(Math.floor(65536 / unit.length));
    const clean = JSON.stringify({ action: "a.b", metadata: { flood } });
    const started = process.cpuUsage();
    redactor.encodedNeedingRules(`[${clean},${clean}]`, [1, clean.length + 2]);
    const spent = process.cpuUsage(started);
    assert.ok(spent.user + spent.system < 500_000, `${JSON.stringify(unit)}: ${spent.user} µs`);
    const secret = JSON.stringify({ action: "a.b", metadata: { flood, note: "pg_dump --password Zq8vR2kLm4Tn6Wp1" } });
    const batch = `[${clean},${secret}]`;
    assert.ok(redactor.encodedNeedingRules(batch, [1, clean.length + 2]).includes(1), JSON.stringify(unit));
  }
});

test("a name beside a character JSON escapes is let through the encoded pre-check to the rules", () => {
  // Attack: `pin<TAB>1234` in a text field or in metadata; in JSON the tab is `\t`, so the
  // pre-check over the encoded event read "\tpin" and "pin\t" as other words and the event
  // went to Redis as captured, though the rules redact the text.
  const redactor = new Redactor();
  const secret = "s3cr3tVALUE42x";
  for (const text of [`pin\t${secret}`, `\npin ${secret}`, `sid\\"="${secret}"`]) {
    for (const event of [
      { action: "a.b", actor: { id: "u-1", type: "user", name: text } },
      { action: "a.b", metadata: { note: text } },
      { action: "a.b", tenant: text },
    ]) {
      const json = JSON.stringify(event);
      assert.ok(redactor.encodedMayHoldSecret(json), json);
      assert.ok(!JSON.stringify(redactor.redactEvent(event)).includes(secret), json);
    }
  }
  const clean = JSON.stringify({ action: "a.b", tenant: "acme" });
  const batch = `[${clean},${JSON.stringify({ action: "a.b", tenant: `pin\t${secret}` })},${clean}]`;
  const starts = [1, 1 + clean.length + 1, batch.length - clean.length - 1];
  assert.deepEqual(redactor.encodedNeedingRules(batch, starts), [1]);
});
