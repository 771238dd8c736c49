// Redaction by auditq's rules, read from the rule data the Python side reads too
// (service/redaction_rules.json, copied into dist/ at build), ported from service/redaction.py
// so that both write the same bytes: the key rule (a mapping key, a change's `field`, the key
// of a `key=value` pair names a secret), the pair rule (name/value mappings, header lists,
// argument lists; the same shapes in text: tuples, flags, XML, YAML) and the value rule
// (credential formats, gitleaks' maintained set and auditq's own; URL passwords; URL-encoded
// runs decoded and redacted as plain text; card numbers masked to their last four).
// Python's `\w`, `\d` and `.` are Unicode / not a line break: W, \p{Nd} and [^\n] here.
import { readFileSync } from "node:fs";

import { Automaton, type Cursor } from "./automaton.js";

export const REDACTED = "[REDACTED]";
const MAX_DEPTH = 200; // nesting redacted; anything deeper is replaced whole (as in Python)
const KEY_CACHE_MAX = 8192; // keys remembered: a service has few distinct keys

interface Allow {
  regexes?: string[];
  stopwords?: string[];
  target?: "secret" | "match" | "line";
  condition?: "OR" | "AND";
}

interface TokenRule {
  id: string;
  regex: string;
  keywords: string[];
  group: number;
  entropy?: number;
  allow?: Allow[];
}

interface RuleData {
  keys: {
    words: string[];
    endings: string[];
    final_words: string[];
    not_secret_before_final: Record<string, string[]>;
    descriptors: string[];
    quantities: string[];
    pair_names: string[];
    pair_values: string[];
  };
  local_tokens: TokenRule[];
  tokens: TokenRule[];
  allow: Allow;
}

interface CompiledAllow {
  regexes: RegExp[];
  stopwords: string[];
  target: "secret" | "match" | "line";
  and: boolean;
}

interface CompiledRule {
  keywords: string[];
  regex: RegExp; // global, with indices: to find each secret
  test: RegExp; // no flags: only whether the rule fits (faster)
  group: number;
  entropy: number | undefined;
  allow: CompiledAllow[];
}

const data = JSON.parse(
  readFileSync(new URL("./redaction_rules.json", import.meta.url), "utf8"),
) as RuleData;

const WORDS = new Set(data.keys.words);
const ENDINGS = data.keys.endings;
// A single glued word that starts with a password word is one too ("passwordhash").
const GLUED_STARTS = ENDINGS.filter((ending) => ending.startsWith("pass"));
const FINAL_WORDS = new Set(data.keys.final_words);
const NOT_BEFORE_FINAL = new Map(
  Object.entries(data.keys.not_secret_before_final).map(([word, before]) => [word, new Set(before)]),
);
const DESCRIPTORS = new Set(data.keys.descriptors);
const QUANTITIES = new Set(data.keys.quantities);
const PAIR_NAMES = data.keys.pair_names;
const PAIR_NAME_SET = new Set(PAIR_NAMES);
const PAIR_VALUES = data.keys.pair_values;
const DIFF_FIELD = "field";
const DIFF_VALUES = ["old", "new"];
const JOIN_MAX = 3; // adjacent words joined when looking for a secret word

function compileAllow(allow: Allow): CompiledAllow {
  return {
    regexes: (allow.regexes ?? []).map((source) => new RegExp(source)),
    stopwords: allow.stopwords ?? [],
    target: allow.target ?? "secret",
    and: allow.condition === "AND",
  };
}

const GLOBAL_ALLOW = compileAllow(data.allow);
// gitleaks' global allowlist belongs to its rules; auditq's own formats need none.
const compileRule = (rule: TokenRule, shared: CompiledAllow[]): CompiledRule => ({
  keywords: rule.keywords,
  regex: new RegExp(rule.regex, "gd"),
  test: new RegExp(rule.regex),
  group: rule.group,
  entropy: rule.entropy,
  allow: [...(rule.allow ?? []).map(compileAllow), ...shared],
});
const RULES: CompiledRule[] = [
  ...data.local_tokens.map((rule) => compileRule(rule, [])),
  ...data.tokens.map((rule) => compileRule(rule, [GLOBAL_ALLOW])),
];

// The pre-checks. A token rule runs only on text holding one of its keywords: one scan finds
// which keywords a text holds, so only their rules run. The other string rules (key=value
// pairs, URL passwords, Bearer/Basic, PEM blocks) need one of these stems, the value rule's
// stems of service/redaction.py; the key rule is asked of keys themselves (remembered).
const RULES_BY_KEYWORD = new Map<string, CompiledRule[]>();
for (const rule of RULES) {
  for (const keyword of rule.keywords) {
    const rules = RULES_BY_KEYWORD.get(keyword) ?? [];
    rules.push(rule);
    RULES_BY_KEYWORD.set(keyword, rules);
  }
}
// service/redaction.py's STEMS: by hand, then every word of the rule data holding none.
// Short final words ("auth", "sid") are stems only where they end a name or key.
const SHORT_FINAL_WORDS = ["auth", "sid"];
const HAND_STEMS = [
  ...["pass", "pwd", "pw", "secret", "token", "cookie", "cred", "authoriz", "jwt", "otp"],
  ...["key", "session", "sessid", "backup", "recovery", "2fa", "mfa", "sig", "bearer"],
  ...["basic", "-----", "://", "%3a%2f%2f", "%253a"],
  ...SHORT_FINAL_WORDS.flatMap((w) => [
    ...[`${w}":`, `${w}':`, `${w}\\"`, `${w}=`, `${w}:`, `${w}>`],
    // A pair's name: first in a list, or a name/value mapping's name.
    ...[`["${w}"`, `[ "${w}"`, `['${w}'`, `('${w}'`, `"${w}" :`],
    ...["name", "key", "field"].flatMap((role) => [`${role}":"${w}"`, `${role}": "${w}"`, `${role}': '${w}'`]),
  ]),
  ...["-auth", "_auth", "-sid", "_sid", ".sid"],
];
const STRING_STEMS = [
  ...HAND_STEMS,
  ...[...new Set([...data.keys.words, ...data.keys.endings, ...data.keys.final_words])]
    .filter((word) => !SHORT_FINAL_WORDS.includes(word) && !HAND_STEMS.some((stem) => word.includes(stem)))
    .sort(),
];

// Letters that read as an ASCII letter once lowercased or uppercased: Kelvin's K ("k"), the
// dotted capital I and the dotless small i of Turkish casing (a Turkish locale's upper() of
// `session_id` is `SESSİON_ID`; its lower() of `CREDENTIALS` has dotless i's). A key's words
// and the text pre-check read them as those letters (one character each: offsets hold), as
// service/redaction.py's _AS_ASCII.
const AS_ASCII_RE = /[\u0130\u0131\u212a]/g;
const AS_ASCII: Record<string, string> = { "\u212a": "K", "\u0130": "I", "\u0131": "i" };
const asAsciiLetter = (ch: string) => AS_ASCII[ch]!;
const NOT_ASCII_RE = /[^\x00-\x7f]/;

/** `text` with the letters of AS_ASCII read as ASCII (the same length). */
function asAscii(text: string): string {
  return text.replace(AS_ASCII_RE, asAsciiLetter);
}

/** Python's _lower: text lowercased, the letters of AS_ASCII read as ASCII first. */
function lower(text: string): string {
  return NOT_ASCII_RE.test(text) ? asAscii(text).toLowerCase() : text.toLowerCase();
}

const PART_RE = /[A-Za-z]+|[0-9]+/g; // between separators; digits stand alone
const WORD_RE = /[A-Z]+(?![a-z])|[A-Z]?[a-z]+/g; // a part cut on case changes

/** The lowercase words a key is made of: `userPassword2` -> user, password (a run of digits
 * makes no word, as in service/redaction.py). */
export function keyWords(key: string): string[] {
  const words: string[] = [];
  for (const part of key.match(PART_RE) ?? []) {
    const pieces = part.match(WORD_RE) ?? []; // digits alone make no word (as in Python)
    if (pieces.length > 1 && pieces.some((piece) => piece.length <= 2)) {
      words.push(part.toLowerCase()); // casing that cuts a part into scraps: one glued word
    } else {
      for (const piece of pieces) words.push(piece.toLowerCase());
    }
  }
  return words;
}

function isSecretWord(word: string, single: boolean): boolean {
  const base = word.length > 3 && word.endsWith("s") ? word.slice(0, -1) : word;
  return (
    WORDS.has(word) ||
    WORDS.has(base) ||
    ENDINGS.some((ending) => base.endsWith(ending)) ||
    (single && GLUED_STARTS.some((start) => base.startsWith(start)))
  );
}

function isGluedSecret(part: string): boolean {
  const word = part.toLowerCase();
  if (word === part || (part.match(WORD_RE) ?? []).length < 2) return false;
  return WORDS.has(word) || (word.endsWith("s") && WORDS.has(word.slice(0, -1)));
}

function normalize(key: string): string {
  return key.toLowerCase().replace(/[^a-z0-9]/g, "");
}

/** The key rule: tell whether a mapping key, change field or pair key names a secret. */
export class KeyRule {
  private readonly extras: Set<string>;
  private readonly cache = new Map<string, boolean>();
  private readonly notFinal = new Map<string, boolean>(); // without the final-word rule
  /** The stems of the string rules that need a key: auditq's, and the extra keys' words. */
  readonly stems: string[];

  constructor(readonly extraKeys: readonly string[] = []) {
    this.extras = new Set(extraKeys.map(normalize).filter((key) => key));
    // Python's max(key_words(key) or (normalize(key),), key=len): the first longest word.
    const extraStems = extraKeys.map((key) =>
      keyWords(key).reduce((a, b) => (b.length > a.length ? b : a), "") || normalize(key),
    );
    // The automaton reads ASCII only: a non-ASCII extra key is still matched as a key.
    this.stems = [...new Set([...STRING_STEMS, ...extraStems])].filter(
      (stem) => stem && /^[\x00-\x7f]+$/.test(stem),
    );
  }

  /** `final` false: a short final word alone (`key`, `sid`) does not count. */
  isSensitive(key: string, final = true): boolean {
    const cache = final ? this.cache : this.notFinal;
    let known = cache.get(key);
    if (known === undefined) {
      known = this.check(key, final);
      if (cache.size >= KEY_CACHE_MAX) cache.clear();
      cache.set(key, known);
    }
    return known;
  }

  private check(key: string, final: boolean): boolean {
    if (this.checkRead(key, final)) return true;
    // A key that holds escapes as written (`to\\u212aen`: a key of JSON written by hand inside
    // a string, decoded) is read with them unescaped too (service/redaction.py).
    if (!key.includes("\\")) return false;
    let view = key;
    for (let level = 0; level < UNESCAPE_MAX; level++) {
      const unescaped = view.replace(ESCAPE_RE, unescapeOne);
      if (unescaped === view) return false;
      view = unescaped;
      if (this.checkRead(view, final)) return true;
    }
    return false;
  }

  /** The key rule as written, and with the letters of AS_ASCII as ASCII. */
  private checkRead(key: string, final: boolean): boolean {
    if (this.isSensitiveAsRead(key, final)) return true;
    // Read again with the letters of AS_ASCII as ASCII (`toKen`, `SESSİON_ID`): as read they
    // part words (`İkey` ends in `key`), as ASCII they may join them.
    if (!NOT_ASCII_RE.test(key)) return false;
    const ascii = asAscii(key);
    return ascii !== key && this.isSensitiveAsRead(ascii, final);
  }

  /** The key rule on `key` as written (no letter of AS_ASCII read as ASCII; not remembered). */
  isSensitiveAsRead(key: string, final = true): boolean {
    const words = keyWords(key);
    if (words.length === 0) return false;
    if ((key.match(PART_RE) ?? []).some(isGluedSecret)) return true;
    if (this.extras.size > 0 && this.namesExtra(words)) return true;
    if (QUANTITIES.has(words[0]!) && words.length > 1) return false;
    const last = words.length - 1;
    const lastWord = words[last]!;
    if (final && FINAL_WORDS.has(lastWord)) {
      // "key", "auth", "session", "pin"… hold a secret only as the key's last word, and not
      // after a word that makes them something else ("primary_key", "oauth").
      const before = last > 0 ? words[last - 1]! : "";
      if (last === 0 || !NOT_BEFORE_FINAL.get(lastWord)?.has(before)) return true;
    }
    let found = false;
    for (let start = 0; start < words.length; start++) {
      let joined = "";
      for (let end = start; end < Math.min(words.length, start + JOIN_MAX); end++) {
        joined += words[end];
        if (isSecretWord(joined, end === start)) {
          if (end === last) return true; // the key ends with the secret: it holds it
          found = true;
        }
      }
    }
    return found && !DESCRIPTORS.has(lastWord);
  }

  private namesExtra(words: string[]): boolean {
    for (let start = 0; start < words.length; start++) {
      let joined = "";
      for (let end = start; end < words.length; end++) {
        joined += words[end];
        if (this.extras.has(joined)) return true;
      }
    }
    return false;
  }
}

// What a key is in a name/value pair, by its last word: NAME ("name", "Key", "ParameterKey"),
// VALUE ("value", "Value", "tagValue"), else NEITHER (the words: pair_names, pair_values).
const NEITHER = 0;
const NAME = 1;
const VALUE = 2;
const PAIR_VALUE_SET = new Set(PAIR_VALUES);
const roles = new Map<string, number>();

function pairRole(key: string): number {
  let role = roles.get(key);
  if (role === undefined) {
    const words = keyWords(key);
    const last = words[words.length - 1];
    role = last === undefined ? NEITHER : PAIR_NAME_SET.has(last) ? NAME : PAIR_VALUE_SET.has(last) ? VALUE : NEITHER;
    if (roles.size >= KEY_CACHE_MAX) roles.clear();
    roles.set(key, role);
  }
  return role;
}

function entropy(text: string): number {
  const counts = new Map<string, number>();
  for (const ch of text) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  let bits = 0;
  for (const count of counts.values()) {
    const p = count / text.length;
    bits -= p * Math.log2(p);
  }
  return bits;
}

function allowed(allow: CompiledAllow, secret: string, match: string, line: string): boolean {
  const target = allow.target === "match" ? match : allow.target === "line" ? line : secret;
  const checks: boolean[] = [];
  if (allow.regexes.length > 0) checks.push(allow.regexes.some((re) => re.test(target)));
  if (allow.stopwords.length > 0) {
    const lower = secret.toLowerCase();
    checks.push(allow.stopwords.some((word) => lower.includes(word)));
  }
  if (checks.length === 0) return false;
  return allow.and ? checks.every(Boolean) : checks.some(Boolean);
}

function lineAround(text: string, start: number, end: number): string {
  const from = text.lastIndexOf("\n", start - 1) + 1;
  const to = text.indexOf("\n", end);
  return text.slice(from, to === -1 ? text.length : to);
}

/** Replace every credential the token rules find in `text`. */
function redactTokens(text: string, rules: Iterable<CompiledRule>): string {
  const spans: Array<[number, number]> = [];
  for (const rule of rules) {
    rule.regex.lastIndex = 0;
    for (const match of text.matchAll(rule.regex)) {
      const indices = match.indices!;
      let index = rule.group;
      if (index === 0) {
        index = match.findIndex((value, i) => i > 0 && value !== undefined && value !== "");
        if (index === -1) index = 0;
      }
      const span = indices[index];
      if (!span) continue;
      const secret = text.slice(span[0], span[1]);
      if (!secret || secret === REDACTED) continue;
      if (rule.entropy !== undefined && entropy(secret) < rule.entropy) continue;
      const whole = match[0];
      const line = lineAround(text, indices[0]![0], indices[0]![1]);
      if (rule.allow.some((allow) => allowed(allow, secret, whole, line))) continue;
      spans.push([span[0], span[1]]);
    }
  }
  if (spans.length === 0) return text;
  // Spans that overlap or touch are one secret (as service/redaction_rules.py merges them).
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let out = "";
  let pos = 0;
  let [start, end] = spans[0]!;
  for (const [nextStart, nextEnd] of spans) {
    if (nextStart <= end) {
      end = Math.max(end, nextEnd);
      continue;
    }
    out += text.slice(pos, start) + REDACTED;
    pos = end;
    [start, end] = [nextStart, nextEnd];
  }
  return out + text.slice(pos, start) + REDACTED + text.slice(end);
}

// Python's `\w` (Unicode: letters, digits of any script, "_"), for the `u` RegExps below.
const W = String.raw`\p{L}\p{N}_`;
const u = (source: string, flags = "") => new RegExp(source, `u${flags}`);

const PEM_RE =
  /-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----[\s\S]*?(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|$(?![\s\S]))/g;
// A URL's scheme and user, up to the ":" before a password (its end is found by hand,
// urlPasswordEnd: Python's lazy scan to the "@" retries from every "scheme://user:", which is
// quadratic on a run of them).
const URL_HEAD_RE = u(String.raw`(?<![${W}+.\-])[a-z][a-z0-9+.\-]*:\/\/[^\s:@\/?#\[\]"'<>]*:`, "gi");
const URL_PORT_RE = u(String.raw`\p{Nd}*[\/?#]`, "y");
// Only the key and separator are consumed, so a non-sensitive value stays searchable. The key
// is taken whole (Python's possessive `++`, as a lookahead and a back-reference). A backslash
// may stand before the separator (`DB_PASSWORD\=…` in a shell or a .properties file), and a
// second quote after the key's (`"\"password\"": …`, a key that holds its own quotes). Symbols
// (arrows, dingbats, emoji, their joiners, "*") stand apart like blanks (`🔒password🔒: …`,
// `password*: …`), and so do a few words in brackets and a number after "#" (`password (new):
// …`, `password [required]: …`, `token #1: …`), before the separator only.
const KEY_NOTE_WORDS = String.raw`[${W} ]{1,20}`;
const KEY_GAP = String.raw`(?:[ \t\u2190-\u2bff\ufe0f\u200d\u{1f000}-\u{1faff}*]|\(${KEY_NOTE_WORDS}\)|\[(?!REDACTED\])${KEY_NOTE_WORDS}\]|#\p{Nd}{1,4})`;
const KEY_RE = u(
  String.raw`(?<![${W}.\-])(?=(?<key>[${W}.\-]+))\k<key>(?<kq>\\?["'](?:\\?["'])?)?${KEY_GAP}*\\?(?<sep>[:=])[ \t]*`,
  "g",
);
const AUTH_SCHEME_RE = /(?:bearer|basic|digest|token|negotiate)[ \t]+/iy;
const QUOTED = String.raw`(?<q>["'])(?:(?!\k<q>)[^\\\r\n]|\\[^\n])*\k<q>?|(?<eq>\\["'])(?:[^\\\r\n]|\\[^"'\r\n])*(?:\\["'])?`;
const STOP = String.raw`\s&,;"'\])}`;
const VALUE_RE = u(String.raw`\[REDACTED\]|${QUOTED}|\[[^\[\]]*\]|\{[^{}]*\}|[^${STOP}\[{][^${STOP}]*`, "y");
// A Cookie header holds many name=value pairs separated by "; ", so take the rest of the line.
const COOKIE_VALUE_RE = u(String.raw`${QUOTED}|[^\r\n"'\\]*[^\s"'\\]`, "y");
// A pair inside a URL-encoded URL (redirect=https%3A%2F%2Fx%2F%3Ftoken%3Dabc%26n%3D1).
const ENCODED_PAIR_RE = u(String.raw`(?<![${W}.\-])(?=(?<key>[${W}.\-]+))\k<key>%3[dD](?<value>(?:(?!%26)[^\s&"'])+)`, "g");
const BARE_AUTH_RE = u(String.raw`(?<![${W}\-])(?<scheme>bearer|basic)(?<gap>[ \t]+)(?<cred>[${W}.~+\/\-]+=*)`, "gi");
const CREDENTIAL_MARKS_RE = /[0-9._~+/=]/;
const CREDENTIAL_MIN_PLAIN_LEN = 20;
const DIFF_FIELD_RE = u(String.raw`(?<![${W}.\-])field\\?["']?[ \t]*[:=][ \t]*\\?["']?(?<name>[${W}.\-]+)`, "gi");
// `--password SECRET`, `-token SECRET` (the `=` form is a pair of KEY_RE); a flag starts the
// text or follows a blank.
const BLANK_DASHES = [" -", "\t-", "\n-", "\r-"];
const FLAG_RE = u(String.raw`(?<![${W}\-])--?(?<key>[A-Za-z][${W}.\-]*)[ \t]+(?=[^\s\-])`, "g");
const FLAG_ITEM_RE = u(String.raw`^--?[A-Za-z][${W}.\-]*$`);
// A quoted name opening a list, a comma, a value: header tuples as text ('authorization', '…');
// and a quoted flag anywhere in a list: argv lists ("--password", "…"). Two alternatives, as
// a back-reference to a group that took no part matches nothing in Python, anything here.
const QUOTED_PAIR_RE = u(
  String.raw`[\[(][ \t]*(?<kq>\\?["'])(?=[${W}.\-]+\k<kq>)(?<key>[${W}.\-]+)\k<kq>[ \t]*,[ \t]*` +
    String.raw`|(?<fq>\\?["'])(?=--?[A-Za-z])(?<flag>[${W}.\-]+)\k<fq>[ \t]*,[ \t]*`,
  "g",
);
// A name/value pair as text: "name": "DB_PASSWORD", "value": … (k8s env, HAR, AWS tags), also
// as XML attributes and with a prefix (ParameterKey): "nm" a pair name, "vn" a pair value.
const NAME_VALUE_RE = u(
  String.raw`(?<![${W}.\-])(?<nq>\\?["']?)(?<nm>[${W}.\-]{1,60})\k<nq>[ \t]*[:=][ \t]*` +
    String.raw`(?<kq>\\?["'])(?<key>[^"'\\\n]{1,100})\k<kq>[ \t]*[,;]?[ \t]*` +
    String.raw`(?<vq>\\?["']?)(?<vn>[${W}.\-]{1,60})\k<vq>[ \t]*[:=][ \t]*`,
  "g",
);
// The same pair with its value first ("value": "…", "name": "DB_PASSWORD").
const PAIR_FIELD_RE = u(String.raw`(?<![${W}.\-])(?<q>\\?["']?)(?<field>[${W}.\-]{1,60})\k<q>[ \t]*[:=][ \t]*`, "g");
const NAME_AFTER_RE = u(
  String.raw`[ \t]*[,;]?[ \t]*(?<nq>\\?["']?)(?<nm>[${W}.\-]{1,60})\k<nq>[ \t]*[:=][ \t]*` +
    String.raw`(?<kq>\\?["'])(?<key>[^"'\\\n]{1,100})\k<kq>`,
  "y",
);
// A pair value word: no NAME_VALUE_RE match without one (substring tests of lowercased text):
// the words no other contains, a one-letter word as a word.
const PAIR_HINT_WORDS = PAIR_VALUES.filter(
  (word) => word.length > 1 && !PAIR_VALUES.some((o) => o !== word && o.length > 1 && word.includes(o)),
).sort();
const PAIR_HINT_LETTERS = PAIR_VALUES.filter((word) => word.length === 1).sort();
const PAIR_HINT_LETTER_RE = u(PAIR_HINT_LETTERS.map((w) => `(?<![${W}])${w}(?![${W}])`).join("|") || "(?!)");
const PAIR_VALUE_NEXT_RE = u(
  String.raw`\\?["']?[ \t]*[,;]?[ \t]*(?<vq>\\?["']?)[${W}.\-]*?(?:${[...PAIR_VALUES].sort().join("|")})\k<vq>[ \t]*[:=]`,
  "iy",
);
// An XML element whose (local) name is sensitive: <wsse:Password …>…</wsse:Password>.
const XML_RE = u(
  String.raw`<(?<tag>[A-Za-z_][${W}:.\-]*)(?:[ \t\r\n][^<>]*)?>(?<value><!\[CDATA\[[\s\S]*?\]\]>|[^<]*)<\/\k<tag>[ \t\r\n]*>`,
  "g",
);
// YAML: a sensitive key with nothing after its colon holds the block below it (also inside a
// JSON string, where a line ends at an escaped "\n" and the string at '"').
const YAML_KEY_RE = u(String.raw`^(?<indent>[ \t]*)(?:-[ \t]+)?(?<key>[${W}.\-]+)[ \t]*:[ \t]*(?:#[^\n]*)?$`);
const YAML_HEAD = String.raw`(?<head>[ \t]*(?:-[ \t]+)?(?:[${W}.\-]+[ \t]*:[ \t]+)?)`;
const YAML_ITEM_RE = u(String.raw`^${YAML_HEAD}(?<value>\S[^\n]*)$`);
const YAML_ITEM_ESCAPED_RE = u(String.raw`^${YAML_HEAD}(?<value>[^\s\\"][^\\"]*)(?<rest>[^\n]*)$`);
// Runs of text (between spaces and quotes) that hold a URL-encoded "%" or "://": decoded and
// redacted as plain text, up to DECODE_MAX times (double encoding); a run that held a secret
// is kept decoded, redacted.
const RUN_RE = /(?<![^\s"'<>])[^\s"'<>]+/g;
const ENCODED_MARK_RE = /%(?:25[0-9A-Fa-f]{2}|3[aA]%2[fF]%2[fF]|40)/;
const DECODE_MAX = 2;
const ASCII_RUN_RE = /[\x00-\x7f]+/g;
const UTF8 = new TextDecoder("utf-8");
const HEX = /^[0-9A-Fa-f]{2}$/;

/** Python's urllib.parse.unquote: %XX escapes read as UTF-8, malformed bytes replaced. */
function unquote(text: string): string {
  if (!text.includes("%")) return text;
  return text.replace(ASCII_RUN_RE, (ascii) => {
    if (!ascii.includes("%")) return ascii;
    const bytes: number[] = [];
    for (let i = 0; i < ascii.length; i++) {
      if (ascii[i] === "%" && HEX.test(ascii.slice(i + 1, i + 3))) {
        bytes.push(parseInt(ascii.slice(i + 1, i + 3), 16));
        i += 2;
      } else {
        bytes.push(ascii.charCodeAt(i));
      }
    }
    return UTF8.decode(Uint8Array.from(bytes));
  });
}

/** Replace the password in scheme://user:password@host URLs. */
function redactUrlPasswords(text: string): string {
  let out = "";
  let pos = 0;
  let noneBefore = -1; // no password ends before this run's end: heads in it need no search
  URL_HEAD_RE.lastIndex = 0;
  for (let head = URL_HEAD_RE.exec(text); head !== null; head = URL_HEAD_RE.exec(text)) {
    const start = head.index + head[0].length;
    URL_PORT_RE.lastIndex = start;
    let at = -1;
    if (start >= noneBefore && !URL_PORT_RE.test(text)) {
      at = urlPasswordEnd(text, start);
      if (at === -1) noneBefore = runEnd(text, start);
    }
    if (at === -1) {
      URL_HEAD_RE.lastIndex = head.index + 1;
      continue;
    }
    out += text.slice(pos, start) + REDACTED + "@";
    pos = at + 1;
    URL_HEAD_RE.lastIndex = pos;
  }
  return pos === 0 ? text : out + text.slice(pos);
}

const RUN_STOP_RE = /[\s"'<>]/;
const isRunStop = (ch: string) => RUN_STOP_RE.test(ch);

function runEnd(text: string, from: number): number {
  let i = from;
  while (i < text.length && !isRunStop(text[i]!)) i++;
  return i;
}

/** Where the password that starts at `from` ends: the first "@" (in the run of non-blank,
 * unquoted characters) after which the host holds no other "@" before a "/", "?", "#" or the
 * run's end (Python's `[^\s"'<>]*?@(?=[^\s"'<>@/?#]*(?:[\s"'<>/?#]|$))`); -1 when none. */
function urlPasswordEnd(text: string, from: number): number {
  let at = -1;
  for (let i = from; i < text.length; i++) {
    const ch = text[i]!;
    if (isRunStop(ch)) break;
    if (ch === "@") {
      at = i; // a previous "@" has this one in its host: not its password's end
    } else if ((ch === "/" || ch === "?" || ch === "#") && at !== -1) {
      return at;
    }
  }
  return at;
}

// Card numbers, as service/redaction.py masks them: 13 to 19 digits, maybe in groups (4-4-4-4,
// 4-6-5), starting with 2-6, Luhn-valid: all but the last four digits become "*". Python's
// \d and \w are Unicode: \p{Nd} and [\p{L}\p{N}_] here. The quick test (ASCII digits, as
// Python's) runs on text with a run of 13 digits/separators; only its hits meet the rule. Not
// after a dash, but after a PEM line's five (`KEY-----3782…`).
const CARD_MIN_CHARS = 13;
const CARD_KEEP = 4; // digits left at the end of a masked card number
const CARD_QUICK_RE = /[2-6][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{4}/;
const CARD_QUICK_ALL_RE = new RegExp(CARD_QUICK_RE.source, "g");
const CARD_RE = new RegExp(
  String.raw`(?:(?<![\p{L}\p{N}_-])|(?<=-----))(?<!\p{Nd}\.)(?:[2-6]\p{Nd}{12,18}|[2-6]\p{Nd}{3}([ -])\p{Nd}{4}\1\p{Nd}{4}\1\p{Nd}{1,7}` +
    String.raw`|3\p{Nd}{3}([ -])\p{Nd}{6}\2\p{Nd}{4,5})(?![\p{L}\p{N}_-]|\.\p{Nd})`,
  "gu",
);
const DIGIT_RE = /\p{Nd}/u;
const CARD_INT_MIN = 2e12; // a JSON integer of 13 to 19 digits, from 2 to 6
const CARD_INT_MAX = 7e18;

/** The value of a decimal digit: Unicode assigns them in runs of whole 0-9 blocks. */
function digitValue(ch: string): number {
  const code = ch.codePointAt(0)!;
  if (code <= 0x39) return code - 0x30;
  let start = code;
  while (DIGIT_RE.test(String.fromCodePoint(start - 1))) start -= 1;
  return (code - start) % 10;
}

/** `text` with all but the last four digits masked when it is a Luhn-valid card number. */
function maskCard(text: string): string | undefined {
  const chars = [...text];
  const digits: number[] = [];
  for (const ch of chars) if (DIGIT_RE.test(ch)) digits.push(digitValue(ch));
  if (digits.length < 13 || digits.length > 19) return undefined;
  let total = 0;
  for (let i = 0; i < digits.length; i++) {
    const d = digits[digits.length - 1 - i]! * (i % 2 ? 2 : 1);
    total += d > 9 ? d - 9 : d;
  }
  if (total % 10 !== 0) return undefined;
  let hide = digits.length - CARD_KEEP;
  let out = "";
  for (const ch of chars) {
    if (DIGIT_RE.test(ch)) {
      out += hide > 0 ? "*" : ch;
      hide -= 1;
    } else {
      out += ch;
    }
  }
  return out;
}

function maskCards(text: string): string {
  if (text.length < CARD_MIN_CHARS || !CARD_QUICK_RE.test(text)) return text;
  return text.replace(CARD_RE, (whole) => maskCard(whole) ?? whole);
}

/** A JSON integer that is a card number, masked (a string); else undefined. */
function maskCardNumber(value: number): string | undefined {
  if (!(value >= CARD_INT_MIN && value < CARD_INT_MAX) || !Number.isInteger(value)) return undefined;
  const text = String(value);
  const first = text.charCodeAt(0);
  return first >= 0x32 && first <= 0x36 ? maskCard(text) : undefined; // "2" to "6"
}

type Groups = Record<string, string | undefined>;

// Escapes in text that is not decoded (redactText): what they spell is read too, up to
// UNESCAPE_MAX levels (JSON in JSON), as service/redaction.py's _ESCAPE_RE reads them (case
// aside: `\U0001…` reads as `\u0001` and `\N` as "N" there too). A control character reads as
// a blank; a lone surrogate stays escaped.
const ESCAPE_RE =
  /\\(?:u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|u([0-9a-f]{4})|x([0-9a-f]{2})|U([0-9a-f]{8})|(["'\\/bfnrt]))/gi;
const ESCAPED: Record<string, string> = { b: " ", f: " ", n: "\n", r: "\r", t: "\t" };
const UNESCAPE_MAX = 3;
const RUN_OF_ALNUM_RE = /[\p{L}\p{N}]+/gu; // Python's [^\W_]
const REDACTED_RUN = "REDACTED"; // REDACTED's one run of letters

function unescapeOne(whole: string, ...groups: Array<string | undefined>): string {
  const [high, low, code, byte, wide, char] = groups;
  if (char !== undefined) return ESCAPED[char] ?? char;
  let point: number;
  if (high !== undefined) {
    point = 0x10000 + ((parseInt(high, 16) - 0xd800) << 10) + parseInt(low!, 16) - 0xdc00;
  } else {
    point = parseInt((code ?? byte ?? wide)!, 16);
    if ((point >= 0xd800 && point < 0xe000) || point > 0x10ffff) return whole;
  }
  if (point < 0x20 || (point >= 0x7f && point < 0xa0)) {
    return point === 0x0a ? "\n" : point === 0x09 ? "\t" : point === 0x0d ? "\r" : " ";
  }
  return String.fromCodePoint(point);
}

let scratch = Buffer.allocUnsafe(4096); // the bytes of the event being pre-checked
// What only the rules read right in an encoded event: any JSON escape (a backslash), and the
// letters of AS_ASCII (their byte above is no letter).
const TEXT_ONLY_MARKS = ["\\", "\u212a", "\u0130", "\u0131"];


// A JSON string value that is exactly a UUID in its canonical form: no rule changes one, but
// its hex digits spell a few words ("2fa", "acca") often enough that a match of such a word
// inside one is no match (as service/redaction.py _inside_uuid).
const HEXISH_RE = /^[0-9a-f-]*[0-9a-f][0-9a-f-]*$/;
const UUID_VALUE_RE = /"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"(?=[,}\]])/y;
const UUID_VALUE_CHARS = 38; // with its quotes

/** Tell whether `json`'s characters from `start` to `end` lie inside a UUID string value. */
function insideUuid(json: string, start: number, end: number): boolean {
  // Its opening quote is the first one before `start` (a UUID holds none), near enough for
  // `end` to be inside: looked for that far only (a search to the text's start at each
  // match of a long run of hex words would be quadratic).
  for (let quote = start - 1; quote >= 0 && quote > end - UUID_VALUE_CHARS; quote--) {
    if (json.charCodeAt(quote) === 0x22) {
      UUID_VALUE_RE.lastIndex = quote;
      return UUID_VALUE_RE.test(json);
    }
  }
  return false;
}

/** The value rule, the key rule on `key=value` pairs inside text, and the pair rule. */
export class Redactor {
  readonly keys: KeyRule;
  private readonly automaton: Automaton;
  private readonly keywordRules: CompiledRule[][]; // by word id; [] for a stem
  private readonly hexLengths: Int32Array; // by word id: its length if an id's hex can spell it
  private diffRedactor: Redactor | undefined; // with "old" and "new" as extra keys

  constructor(extraKeys: Iterable<string> = []) {
    this.keys = new KeyRule([...extraKeys]);
    const keywords = [...RULES_BY_KEYWORD.keys()];
    this.keywordRules = keywords.map((keyword) => RULES_BY_KEYWORD.get(keyword)!);
    for (const _ of this.keys.stems) this.keywordRules.push([]);
    const words = [...keywords, ...this.keys.stems];
    this.automaton = new Automaton(words);
    this.hexLengths = Int32Array.from(words, (word) => (HEXISH_RE.test(word) ? word.length : 0));
  }

  /** One pass over `text`: the token rules whose keywords it holds, and whether it holds a
   * stem of the other string rules. */
  private scan(text: string): { rules: Set<CompiledRule> | undefined; stem: boolean } {
    let rules: Set<CompiledRule> | undefined;
    let stem = false;
    const keywordRules = this.keywordRules;
    this.automaton.scan(text, (id) => {
      const found = keywordRules[id]!;
      if (found.length === 0) {
        stem = true;
      } else {
        rules ??= new Set();
        for (const rule of found) rules.add(rule);
      }
    });
    return { rules, stem };
  }

  /** Return `text` with every credential it carries replaced by [REDACTED] (`decoded`: how
   * many times it was URL-decoded already). */
  redactString(text: string, decoded = 0): string {
    const { rules, stem } = this.scan(text);
    if (!stem && !(text.length >= CARD_MIN_CHARS && CARD_QUICK_RE.test(text))) {
      // The common case: no stem, no card: only the token rules can match, and where one
      // does every rule runs (as service/redaction.py's pre-check lets it through).
      if (rules === undefined || redactTokens(text, rules) === text) return text;
    }
    return this.redactRules(text, rules, decoded);
  }

  /** redactString, and what the escapes of `text` spell read too (service/redaction.py's
   * redact_sensitive_in_string): for text that is not decoded (a key, a change's field, a
   * failure line's values, where `pass\u0077ord`, `pin\t…`, `\r\nAuthorization: …` may
   * stand as written). A text that held a secret only its escapes spell is kept unescaped,
   * with what either reading took away redacted. */
  redactText(text: string): string {
    const out = this.redactString(text);
    return text.includes("\\") ? this.redactEscaped(text, out, UNESCAPE_MAX) : out;
  }

  /** A mapping key redacted as service/redaction.py's _redact_mapping redacts one: its
   * escapes are read only when its pre-check lets it through. */
  private redactKey(key: string): string {
    const out = this.redactString(key);
    if (!key.includes("\\") || (out === key && !this.mayHoldSecret(key))) return out;
    return this.redactEscaped(key, out, UNESCAPE_MAX);
  }

  /** The pre-check of redactString: false means no rule changes `text`. */
  private mayHoldSecret(text: string): boolean {
    const { rules, stem } = this.scan(text);
    if (stem || (text.length >= CARD_MIN_CHARS && CARD_QUICK_RE.test(text))) return true;
    return rules !== undefined && redactTokens(text, rules) !== text;
  }

  /** `out` (`text` redacted); or, when the rules over `text` unescaped take away runs of
   * letters and digits that `out` kept, `out` unescaped with those runs redacted too (what
   * either reading took away is gone). `levels` of escapes are read (_redact_escaped). */
  private redactEscaped(text: string, out: string, levels: number): string {
    return this.escapeReading(text, out, levels)[0];
  }

  /** redactEscaped's answer, and the runs it took away (none: `out` as it is), level by
   * level (service/redaction.py _escape_reading). */
  private escapeReading(text: string, out: string, levels: number): [string, Set<string>] {
    let view = text;
    let shown = out;
    let kept = out;
    const takenAll = new Set<string>();
    for (let level = 0; level < levels; level++) {
      const unescaped = view.replace(ESCAPE_RE, unescapeOne);
      if (unescaped === view) break;
      view = unescaped;
      shown = shown.replace(ESCAPE_RE, unescapeOne);
      const left = new Set(this.redactString(view).match(RUN_OF_ALNUM_RE) ?? []);
      const taken = new Set((shown.match(RUN_OF_ALNUM_RE) ?? []).filter((run) => !left.has(run) && run !== REDACTED_RUN));
      if (taken.size > 0) {
        shown = shown.replace(RUN_OF_ALNUM_RE, (run) => (taken.has(run) ? REDACTED : run));
        kept = shown;
        for (const run of taken) takenAll.add(run); // deeper escapes may hide more
      }
    }
    return [kept, takenAll];
  }

  /** A string of a decoded event, redacted already, with what its escapes spell read too
   * (service/redaction.py redact_escapes_as_written): a run that reading takes away is
   * redacted where it stands as written; when one is spelled with an escape itself, the
   * string is kept as redactEscaped keeps it (unescaped, redacted). */
  private redactEscapesAsWritten(text: string): string {
    const [shown, taken] = this.escapeReading(text, text, UNESCAPE_MAX);
    if (taken.size === 0) return text;
    const written = text.replace(RUN_OF_ALNUM_RE, (run) => (taken.has(run) ? REDACTED : run));
    if (written !== text && this.escapeReading(written, written, UNESCAPE_MAX)[1].size === 0) return written;
    return shown;
  }

  /** Every rule on `text`, in service/redaction.py's order (_redact_rules). */
  private redactRules(text: string, rules: Set<CompiledRule> | undefined, decoded: number): string {
    // A change diff as text: {"field": "password", "old": …}: every "old"/"new" goes.
    const self = this.namesSecretField(text) ? this.forDiff() : this;
    const keys = self.keys;
    const low = lower(text);
    let out = rules === undefined ? text : redactTokens(text, rules);
    if (out.includes("-----")) out = out.replace(PEM_RE, REDACTED);
    if (out.includes("://")) out = redactUrlPasswords(out);
    const pairHint = (out.includes(",") || out.includes("=")) && hasPairValueWord(low);
    if (pairHint) out = redactValueBeforeName(out, keys);
    if (out.includes("=") || out.includes(":")) out = redactPairs(out, keys);
    if (out.includes("://")) out = redactUrlPasswords(out);
    if (out.includes("%3")) {
      out = out.replace(ENCODED_PAIR_RE, (whole, ...args) => {
        const { key, value } = args[args.length - 1] as Groups;
        return value === REDACTED || !keys.isSensitive(key!) ? whole : `${key}%3D${REDACTED}`;
      });
    }
    if (low.includes("bearer") || low.includes("basic")) out = out.replace(BARE_AUTH_RE, redactBareAuth);
    out = redactTextPairs(out, keys, pairHint);
    if (out.includes("%") && decoded < DECODE_MAX) {
      out = out.replace(RUN_RE, (run) => {
        if (!ENCODED_MARK_RE.test(run)) return run;
        const plain = unquote(run);
        const redacted = self.redactString(plain, decoded + 1);
        return redacted === plain ? run : redacted;
      });
    }
    out = maskCards(out);
    return out === text ? text : out;
  }

  private namesSecretField(text: string): boolean {
    if (!text.toLowerCase().includes("field")) return false;
    for (const match of text.matchAll(DIFF_FIELD_RE)) {
      if (this.keys.isSensitive((match.groups as Groups).name!)) return true;
    }
    return false;
  }

  private forDiff(): Redactor {
    this.diffRedactor ??= new Redactor([...this.keys.extraKeys, ...DIFF_VALUES]);
    return this.diffRedactor;
  }

  /** The pre-check over an encoded event (service/redaction.py json_precheck): false means
   * no rule would change any of its keys, strings or numbers. */
  encodedMayHoldSecret(json: string): boolean {
    return this.encodedNeedingRules(json, [0]).length > 0;
  }

  /** The pre-check over encoded events joined in one text (a batch; `starts`: where each
   * begins, in order): the indexes of those a rule may change. One pass over the JSON: its
   * keys and strings are all in it, and the stems hold the forms a key or a pair's name
   * takes in JSON ("auth":, ["auth", "name":"auth"). A word across two events is a false
   * alarm (the rules then decide), as is one in the text between them. */
  encodedNeedingRules(json: string, starts: readonly number[]): number[] {
    const count = starts.length;
    const end = json.length;
    const flagged = new Uint8Array(count);
    const eventAt = (at: number, from: number) => {
      let k = from;
      while (k + 1 < count && starts[k + 1]! <= at) k++;
      return k;
    };
    CARD_QUICK_ALL_RE.lastIndex = 0;
    for (let k = 0, card = CARD_QUICK_ALL_RE.exec(json); card !== null; card = CARD_QUICK_ALL_RE.exec(json)) {
      if (insideUuid(json, card.index, card.index + card[0].length)) {
        CARD_QUICK_ALL_RE.lastIndex = card.index + 1; // digits of an id ("…-2345-6789…")
        continue;
      }
      k = eventAt(card.index, k);
      flagged[k] = 1;
      if (k + 1 === count) break;
      CARD_QUICK_ALL_RE.lastIndex = starts[k + 1]!; // the next event
    }
    if (scratch.length < end) scratch = Buffer.allocUnsafe(Math.max(end, 2 * scratch.length));
    // One byte a character: ASCII as it is, any other character as one byte no word holds
    // or as its low byte (a match it makes is a false alarm). Bytes read faster than a
    // string's characters.
    const bytes = scratch;
    bytes.write(json, 0, end, "latin1");
    const { automaton, keywordRules, hexLengths } = this;
    const keywords = new Map<number, Set<CompiledRule>>(); // event -> the rules of its keywords
    // The events in two halves read at once (a word across the two is a false alarm too).
    const half = count >> 1;
    const middle = half === 0 ? end : starts[half]!;
    const cursors: [Cursor, Cursor] = [
      { at: 0, state: 0, end: middle },
      { at: middle, state: 0, end },
    ];
    const events = [0, half]; // the event each cursor is in
    for (let which = automaton.firstHitOfTwo(bytes, ...cursors); which !== -1; which = automaton.firstHitOfTwo(bytes, ...cursors)) {
      const cursor = cursors[which];
      const { state, at } = cursor;
      const k = (events[which] = eventAt(at, events[which]!));
      let stem = flagged[k] === 1;
      for (const id of automaton.hits(state)) {
        if (stem) break;
        const hex = hexLengths[id]!;
        if (hex > 0 && insideUuid(json, at + 1 - hex, at + 1)) continue; // an id's hex digits
        const found = keywordRules[id]!;
        if (found.length === 0) {
          stem = true; // the rules must run
        } else {
          let rules = keywords.get(k);
          if (rules === undefined) keywords.set(k, (rules = new Set()));
          for (const rule of found) rules.add(rule);
        }
      }
      if (!stem) {
        cursor.at = at + 1;
      } else {
        flagged[k] = 1;
        cursor.at = k + 1 < count ? starts[k + 1]! : end; // the next event, afresh
        cursor.state = 0;
      }
    }
    // Only token rules' keywords ("ey", "sk" occur in much plain text): does a rule fit?
    for (const [at, rules] of keywords) {
      if (flagged[at] === 1) continue;
      const text = json.slice(starts[at], at + 1 < count ? starts[at + 1] : end);
      for (const rule of rules) {
        if (rule.test.test(text)) {
          flagged[at] = 1;
          break;
        }
      }
    }
    // A JSON escape (a tab, a line break, a quote, a backslash) stands where the text has a
    // separator: a name beside one (`pin<TAB>1234`, `\npin 1234`) is not where the words
    // above are looked for; and a letter the text pre-check reads as ASCII (AS_ASCII) is
    // another byte above. So the rules decide every string of an event holding one of these
    // marks (service/redaction.py, _TEXT_ONLY_MARKS).
    for (const mark of TEXT_ONLY_MARKS) {
      for (let k = 0, at = json.indexOf(mark); at !== -1; ) {
        k = eventAt(at, k);
        flagged[k] = 1;
        if (k + 1 === count) break;
        at = json.indexOf(mark, starts[k + 1]!);
      }
    }
    const needing: number[] = [];
    for (let i = 0; i < count; i++) if (flagged[i] === 1) needing.push(i);
    return needing;
  }

  /** An event redacted as service/events.py redacts one: as `redact` does, but a change
   * whose field names a secret keeps "no value" (null) as it is. */
  redactEvent<T extends object>(event: T): T {
    // Escapes as written inside a string (JSON written by hand into a field) are read too, as
    // service/events.py reads them when the event's JSON holds a mark (a backslash).
    const out = this.redact(event, 0, true) as Record<string, unknown>;
    const changes = (event as Record<string, unknown>).changes;
    if (!Array.isArray(changes) || !Array.isArray(out.changes)) return out as T;
    out.changes = out.changes.map((change: unknown, i: number) => {
      const given = changes[i] as Record<string, unknown> | null;
      if (given === null || typeof given !== "object" || typeof given.field !== "string") return change;
      if (!this.keys.isSensitive(given.field)) {
        // Its field is text that is not decoded (service/events.py redact_sensitive_in_string).
        if (!given.field.includes("\\")) return change;
        return { ...(change as object), field: this.redactText(given.field) };
      }
      const kept = DIFF_VALUES.filter((k) => given[k] === null).map((k) => [k, null]);
      // Sensitive maybe only read unescaped: its text may hold a secret (service/events.py).
      if (given.field.includes("\\")) kept.push(["field", this.redactText(given.field)]);
      return { ...(change as object), ...Object.fromEntries(kept) };
    });
    return out as T;
  }

  /** Return JSON-like data with secrets redacted (a copy where anything changed); `escapes`:
   * what the escapes of its strings spell is read too (service/redaction.py redact_escapes). */
  redact(value: unknown, depth = 0, escapes = false): unknown {
    if (typeof value === "string") {
      const out = this.redactString(value);
      return escapes && out.includes("\\") ? this.redactEscapesAsWritten(out) : out;
    }
    if (typeof value === "number") return maskCardNumber(value) ?? value;
    if (value === null || typeof value !== "object") return value;
    if (depth >= MAX_DEPTH) return REDACTED;
    if (Array.isArray(value)) return this.redactList(value, depth, escapes);
    const mapping = value as Record<string, unknown>;
    const keys = this.keys;
    const field = mapping[DIFF_FIELD];
    // A change diff names the secret in "field" and carries it under "old"/"new".
    const secretDiff = typeof field === "string" && keys.isSensitive(field);
    // A name/value pair names it in "name" ("Key", "ParameterKey", …) and carries it in
    // "value" ("Value", "tagValue", …).
    const entries = Object.entries(mapping);
    let pairShaped = false;
    let secretPair = false;
    if (entries.length > 1 && entries.length <= PAIR_MAX_ITEMS && entries.some(([key]) => pairRole(key) === VALUE)) {
      pairShaped = true;
      secretPair = entries.some(([key, item]) => pairRole(key) === NAME && typeof item === "string" && keys.isSensitive(item));
    }
    const out: Record<string, unknown> = {};
    for (const [key, item] of entries) {
      if (
        (keys.isSensitive(key) && !(pairShaped && pairRole(key) === NAME && !keys.isSensitive(key, false))) ||
        (secretDiff && DIFF_VALUES.includes(key)) ||
        (secretPair && pairRole(key) === VALUE)
      ) {
        // Sensitive only read as ASCII (`toKen`) or unescaped (`to\\u212aen`): its text is read
        // as any key's (with its escapes, as service/redaction.py's redact_sensitive_in_string).
        const escaped = key.includes("\\");
        const otherwise = (escaped || NOT_ASCII_RE.test(key)) && !keys.isSensitiveAsRead(key);
        out[!otherwise ? key : escaped ? this.redactText(key) : this.redactKey(key)] = REDACTED;
      } else {
        out[this.redactKey(key)] = this.redact(item, depth + 1, escapes);
      }
    }
    return out;
  }

  /** Redact every item, and the value of each pair or command-line flag the list holds. */
  private redactList(items: unknown[], depth: number, escapes: boolean): unknown[] {
    const out = items.map((item) => this.redact(item, depth + 1, escapes));
    // A list of pairs ([["Authorization", "…"], ["Accept", "…"]]): each sensitive one goes.
    const pairs = items.filter(isPairShape).length >= 2;
    if (pairs) {
      items.forEach((item, i) => {
        if (isPairShape(item) && this.secretPair(item, false)) out[i] = [item[0], REDACTED];
      });
    } else if (items.length === 2 && this.secretPair(items, true)) {
      out[1] = REDACTED;
    }
    // An argument list: ["pg_dump", "--password", "…"].
    for (let i = 0; i < items.length - 1; i++) {
      const flag = items[i];
      if (typeof flag === "string" && flag.startsWith("-") && FLAG_ITEM_RE.test(flag)) {
        if (this.keys.isSensitive(flag.replace(/^-+/, "")) && items[i + 1] !== REDACTED) out[i + 1] = REDACTED;
      }
    }
    return out;
  }

  /** Tell whether a two-item list is a (sensitive name, value) pair; `strict`: not when the
   * value reads as a field name (["password", "email"] is more likely a list of fields). */
  private secretPair(pair: unknown[], strict: boolean): boolean {
    const [name, value] = pair;
    if (typeof name !== "string" || value === REDACTED || !this.keys.isSensitive(name)) return false;
    return !(strict && typeof value === "string" && FIELD_NAME_RE.test(value));
  }
}

const PAIR_MAX_ITEMS = 8; // a name/value pair is a small mapping (a HAR entry adds a comment)
const FIELD_NAME_RE = /^[a-z][a-z_]{0,39}$/;

function isPairShape(item: unknown): item is [string, unknown] {
  return Array.isArray(item) && item.length === 2 && typeof item[0] === "string";
}

function hasPairValueWord(low: string): boolean {
  for (const word of PAIR_HINT_WORDS) if (low.includes(word)) return true;
  return PAIR_HINT_LETTERS.some((w) => low.includes(w)) && PAIR_HINT_LETTER_RE.test(low);
}

function redactBareAuth(whole: string, ...args: unknown[]): string {
  const { scheme, gap, cred } = args[args.length - 1] as Groups;
  // Prose ("basic authentication") survives; real credentials carry marks or length.
  const plain = !CREDENTIAL_MARKS_RE.test(cred!) && ![...cred!.slice(1)].some((ch) => /\p{Lu}/u.test(ch));
  return plain && cred!.length < CREDENTIAL_MIN_PLAIN_LEN ? whole : `${scheme}${gap}${REDACTED}`;
}

/** Replace the value of every key=value / key: value pair whose key is sensitive. */
function redactPairs(text: string, keys: KeyRule): string {
  let out = "";
  let pos = 0;
  for (const match of text.matchAll(KEY_RE)) {
    const { key, kq, sep } = match.groups as Groups;
    // A match inside a value that was already redacted must not be spliced again.
    if (match.index! < pos || !keys.isSensitive(key!)) continue;
    let start = match.index! + match[0].length;
    const words = keyWords(key!);
    const last = words[words.length - 1] ?? "";
    if (last === "authorization") {
      AUTH_SCHEME_RE.lastIndex = start;
      if (AUTH_SCHEME_RE.exec(text)) start = AUTH_SCHEME_RE.lastIndex;
    }
    if (text.startsWith("\\n", start) || text.startsWith("\\r", start)) continue; // a YAML block
    const valueRe = last === "cookie" && sep === ":" ? COOKIE_VALUE_RE : VALUE_RE;
    valueRe.lastIndex = start;
    const value = valueRe.exec(text);
    if (value === null) continue;
    const end = start + value[0].length;
    if (pairRole(key!) === NAME && !keys.isSensitive(key!, false)) {
      PAIR_VALUE_NEXT_RE.lastIndex = end;
      if (PAIR_VALUE_NEXT_RE.test(text)) continue; // "key": "api_token", "value": … names it
    }
    const { q, eq } = value.groups as Groups;
    const quote = q ?? eq ?? kq ?? "";
    out += text.slice(pos, start) + quote + REDACTED + quote;
    pos = end;
  }
  return pos === 0 ? text : out + text.slice(pos);
}

/** Replace the value that follows each match of `pattern` whose key is sensitive (and, for
 * NAME_VALUE_RE, whose "nm" and "vn" are a pair's name and value fields). */
function redactAfter(text: string, pattern: RegExp, keys: KeyRule): string {
  let out = "";
  let pos = 0;
  const pairs = pattern === NAME_VALUE_RE;
  for (const match of text.matchAll(pattern)) {
    const groups = match.groups as Groups;
    const end = match.index! + match[0].length;
    if (match.index! < pos || !keys.isSensitive((groups.key ?? groups.flag)!)) continue;
    if (pairs && (pairRole(groups.nm!) !== NAME || pairRole(groups.vn!) !== VALUE)) continue;
    VALUE_RE.lastIndex = end;
    const value = VALUE_RE.exec(text);
    if (value === null || value[0].length === 0) continue;
    const { q, eq } = value.groups as Groups;
    const quote = q ?? eq ?? "";
    out += text.slice(pos, end) + quote + REDACTED + quote;
    pos = end + value[0].length;
  }
  return pos === 0 ? text : out + text.slice(pos);
}

/** Replace the value of a pair written value first, whose name is sensitive. */
function redactValueBeforeName(text: string, keys: KeyRule): string {
  let out = "";
  let pos = 0;
  for (const field of text.matchAll(PAIR_FIELD_RE)) {
    const end = field.index! + field[0].length;
    if (field.index! < pos || pairRole((field.groups as Groups).field!) !== VALUE) continue;
    VALUE_RE.lastIndex = end;
    const value = VALUE_RE.exec(text);
    if (value === null || value[0].length === 0 || value[0] === REDACTED) continue;
    NAME_AFTER_RE.lastIndex = end + value[0].length;
    const name = NAME_AFTER_RE.exec(text);
    const groups = name?.groups as Groups | undefined;
    if (groups === undefined || pairRole(groups.nm!) !== NAME || !keys.isSensitive(groups.key!)) continue;
    const { q, eq } = value.groups as Groups;
    const quote = q ?? eq ?? "";
    out += text.slice(pos, end) + quote + REDACTED + quote;
    pos = end + value[0].length;
  }
  return pos === 0 ? text : out + text.slice(pos);
}

/** Pairs whose name and value stand apart: flags, quoted pairs, XML, YAML lists (`pairHint`:
 * the text holds a pair value word). */
function redactTextPairs(text: string, keys: KeyRule, pairHint: boolean): string {
  if (text.startsWith("-") || BLANK_DASHES.some((blank) => text.includes(blank))) {
    text = redactAfter(text, FLAG_RE, keys);
  }
  if (text.includes(",")) text = redactAfter(text, QUOTED_PAIR_RE, keys);
  if (pairHint) text = redactAfter(text, NAME_VALUE_RE, keys);
  if (text.includes("</")) {
    text = text.replace(XML_RE, (whole, ...args) => {
      const { tag, value } = args[args.length - 1] as Groups;
      const local = tag!.slice(tag!.lastIndexOf(":") + 1);
      if (!value!.trim() || value === REDACTED || !keys.isSensitive(local)) return whole;
      const start = whole.indexOf(">") + 1; // the opening tag's attributes hold no ">"
      return whole.slice(0, start) + REDACTED + whole.slice(start + value!.length);
    });
  }
  if (text.includes("\n") && text.includes(":")) text = redactYamlBlocks(text, keys, "\n");
  if (text.includes("\\n") && text.includes(":")) text = redactYamlBlocks(text, keys, "\\n");
  return text;
}

/** `line` without the "\r"s it ends with (Python's rstrip("\r"); a RegExp `\r+$` would
 * retry from every "\r" of a run). */
function stripCr(line: string): string {
  let end = line.length;
  while (end > 0 && line.charCodeAt(end - 1) === 13) end--;
  return end === line.length ? line : line.slice(0, end);
}

/** Replace every item of a YAML block (a list, a mapping) under a sensitive key. */
function redactYamlBlocks(text: string, keys: KeyRule, newline: string): string {
  const escaped = newline !== "\n";
  const itemRe = escaped ? YAML_ITEM_ESCAPED_RE : YAML_ITEM_RE;
  const lines = text.split(newline);
  let changed = false;
  let i = 0;
  while (i < lines.length) {
    let line = stripCr(lines[i]!);
    const head = YAML_KEY_RE.exec(escaped ? line.slice(line.lastIndexOf('"') + 1) : line);
    i += 1;
    if (head === null || !keys.isSensitive((head.groups as Groups).key!)) continue;
    const indent = (head.groups as Groups).indent!.length;
    while (i < lines.length) {
      line = stripCr(lines[i]!);
      const body = line.replace(/^[ \t]+/, "");
      const depth = line.length - body.length;
      if (body && !(depth > indent || (depth === indent && body.startsWith("- ")))) break;
      const item = itemRe.exec(line);
      const groups = item?.groups as Groups | undefined;
      if (groups !== undefined && groups.value !== REDACTED) {
        lines[i] = groups.head! + REDACTED + (groups.rest ?? "") + lines[i]!.slice(line.length);
        changed = true;
      }
      i += 1;
    }
  }
  return changed ? lines.join(newline) : text;
}
