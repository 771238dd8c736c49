// The shared rule data in this engine (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { failureLine } from "../dist/failures.js";
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
    ...["password🔒", "🔒".repeat(8) + "token", "key\\", '"\\"a\\"', "to\u212aen ", "pass\\u0077ord ", "\\\\\\u"],
  ];
  for (const unit of units) {
    const flood = unit.repeat(Math.floor(65536 / unit.length)).slice(0, 60000) + "x".repeat(5000);
    const started = process.cpuUsage();
    redactor.redactText(flood);
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

/** What the client writes to Redis for these events (AuditClient's redactBatch): the
 * pre-check over the batch as one JSON array, then each flagged event redacted. */
function sentBatch(redactor, events) {
  const payloads = events.map((event) => JSON.stringify(event));
  const starts = [];
  let at = 1;
  for (const payload of payloads) {
    starts.push(at);
    at += payload.length + 1;
  }
  const flagged = redactor.encodedNeedingRules(`[${payloads.join(",")}]`, starts);
  for (const i of flagged) payloads[i] = JSON.stringify(redactor.redactEvent(JSON.parse(payloads[i])));
  return `[${payloads.join(",")}]`;
}

/** One event per planted text, the text in each place an event holds one, beside clean
 * events (a batch as the client sends it). */
function plantedBatch(texts) {
  const clean = { action: "a.b", tenant: "acme", metadata: { note: "quarterly flamingo report" } };
  return texts.flatMap((text) => [
    clean,
    { action: "a.b", metadata: { note: text } },
    { action: "a.b", tenant: text, entity: { type: "doc", id: "1", name: text } },
    { action: "a.b", changes: [{ field: "note", old: text, new: "x" }], metadata: { items: [text] } },
    clean,
  ]);
}

const PLANTED = "Zq8vR2kLm4Tn6Wp1";
const KELVIN = "\u212a";
const DOTTED_I = "\u0130";
const DOTLESS_I = "\u0131";

test("a name spelled with Kelvin's K or a Turkish I is a secret's name (service/redaction.py _AS_ASCII)", () => {
  // Attack: the key words split on ASCII letters only, the pre-check read those letters as no
  // letter at all (and the encoded pre-check as a "*", a "0" or a "1"): toKen, SESSİON_ID,
  // credentıals went to Redis with their values, which the Python side redacts.
  const redactor = new Redactor();
  const names = [`to${KELVIN}en`, `SESS${DOTTED_I}ON_ID`, `credent${DOTLESS_I}als`, `api_${KELVIN}ey`, `${KELVIN}EY`];
  for (const name of names) assert.ok(redactor.keys.isSensitive(name), name);
  assert.ok(!redactor.keys.isSensitive(`ti${KELVIN}et`), "ticket"); // read as ASCII, still no secret
  const texts = [
    `to${KELVIN}en=${PLANTED}`,
    `SESS${DOTTED_I}ON_ID=${PLANTED}`,
    `credent${DOTLESS_I}als: ${PLANTED}`,
    `export API_${KELVIN}EY="${PLANTED}"`,
    `{"sess${DOTTED_I}onId": "${PLANTED}"}`,
    `cl${DOTTED_I}ENT_SECRET: ${PLANTED}`,
  ];
  for (const text of texts) {
    assert.ok(!redactor.redactString(text).includes(PLANTED), text);
    assert.ok(!sentBatch(redactor, plantedBatch([text])).includes(PLANTED), text);
  }
  // As mapping keys: the value goes, in metadata, params and nested lists.
  const events = names.map((name) => ({
    action: "a.b",
    metadata: { [name]: PLANTED, nested: [{ [name]: PLANTED }] },
    presentation: { code: "a.b", params: { [name]: PLANTED } },
  }));
  const sent = sentBatch(redactor, events);
  assert.ok(!sent.includes(PLANTED), sent);
  assert.equal(JSON.parse(sent)[0].metadata[names[0]], "[REDACTED]");
});

test("a backslash before a pair's separator, or a key that holds its own quotes, is a pair", () => {
  // Attack: `DB_PASSWORD\=…` (a shell's or a .properties file's escape), `"\"password\"": …`
  // (a key holding its own quotes) were read as no pair; the Python side reads both.
  const redactor = new Redactor();
  const texts = [
    `DB_PASSWORD\\=${PLANTED}`,
    `api_key\\: ${PLANTED}`,
    `spring.datasource.password\\=${PLANTED} user\\=ann`,
    `{"\\"password\\"": "${PLANTED}"}`,
    `{'\\'token\\'': '${PLANTED}'}`,
    `{"'client_secret'": "${PLANTED}"}`,
    `"\\"secret\\"" \\= ${PLANTED}`,
  ];
  for (const text of texts) {
    assert.ok(!redactor.redactString(text).includes(PLANTED), text);
    assert.ok(!sentBatch(redactor, plantedBatch([text])).includes(PLANTED), text);
  }
  assert.equal(redactor.redactString(`DB_PASSWORD\\=${PLANTED} user\\=ann`), "DB_PASSWORD\\=[REDACTED] user\\=ann");
  assert.equal(redactor.redactString(`{"\\"password\\"": "${PLANTED}"}`), '{"\\"password\\"": "[REDACTED]"}');
  // What no rule names stays.
  for (const text of ["path\\=C:\\tmp", `{"\\"title\\"": "Quarterly"}`]) {
    assert.equal(redactor.redactString(text), text);
  }
});

test("symbols between a name and its separator stand apart like blanks (arrows, dingbats, emoji)", () => {
  // Attack: `🔒password🔒: …`, `token ➜: …` were no pair (only blanks and tabs stood between
  // a key and its separator); the Python side reads such symbols as blanks.
  const redactor = new Redactor();
  const texts = [
    `🔒password🔒: ${PLANTED}`,
    `token ➜: ${PLANTED}`,
    `secret\u26a0\ufe0f: ${PLANTED}`,
    `👨\u200d💻api_key👨\u200d💻= ${PLANTED}`,
    `password\u2192= ${PLANTED}`,
    `🔑 client_secret 🔑: ${PLANTED}`,
  ];
  for (const text of texts) {
    assert.ok(!redactor.redactString(text).includes(PLANTED), text);
    assert.ok(!sentBatch(redactor, plantedBatch([text])).includes(PLANTED), text);
  }
  assert.equal(redactor.redactString(`🔒password🔒: ${PLANTED}`), "🔒password🔒: [REDACTED]");
  for (const text of ["🔒title🔒: Quarterly", "status ➜: shipped", "🎉 launch: today"]) {
    assert.equal(redactor.redactString(text), text);
  }
});

test("escapes in text that is not decoded (a key, a change's field, a failure line) are read as the Python side reads them", () => {
  // Attack: service/redaction.py's redact_sensitive_in_string reads what escapes spell
  // (`pass\u0077ord`, `pin\t…`, `\r\nAuthorization: …`, three levels); the Node client read
  // them as written, so a failure line or a key kept the secret the Python side takes away.
  const redactor = new Redactor();
  const texts = [
    `"pass\\u0077ord": "${PLANTED}"`,
    `pin\\t${PLANTED}`,
    `\\r\\nAuthorization: Bearer ${PLANTED}`,
    `auth\\\\\\"=\\\\\\"${PLANTED}\\\\\\"`,
    `{"to\\u212aen": "${PLANTED}"}`,
    `api\\u005fkey\\u003d${PLANTED}`,
  ];
  for (const text of texts) {
    assert.ok(redactor.redactString(text).includes(PLANTED), `a value as the event path reads it: ${text}`);
    assert.ok(!redactor.redactText(text).includes(PLANTED), text);
    const line = failureLine({ action: "a.b", entity: { type: "doc", id: text } }, new Error(text), undefined, redactor);
    assert.ok(!line.includes(PLANTED), line);
  }
  assert.equal(redactor.redactText(`"pass\\u0077ord": "${PLANTED}"`), '"password": "[REDACTED]"');
  for (const text of ["tok\\U0001f512en=x", "path\\\\to\\\\file", "line\\nnext \\ud800 lone"]) {
    assert.equal(redactor.redactText(text), text);
  }
  // A key, a change's field: read unescaped, each names a secret (`password`): its value goes,
  // and its text is read as any key's, escapes and all.
  const event = {
    action: "a.b",
    metadata: { [`see https://x/ \\u0070assword=${PLANTED}`]: 1, [`note \\u0070assword=${PLANTED}`]: 2 },
    changes: [{ field: `basic \\u0070assword=${PLANTED}`, old: "a", new: "b" }],
  };
  const redacted = redactor.redactEvent(event);
  assert.deepEqual(redacted.metadata, {
    "see https://x/ password=[REDACTED]": "[REDACTED]",
    "note password=[REDACTED]": "[REDACTED]",
  });
  assert.deepEqual(redacted.changes, [{ field: "basic [REDACTED]=[REDACTED]", old: "[REDACTED]", new: "[REDACTED]" }]);
});
