// Redaction by auditq's rules, read from the rule data the Python side reads too
// (service/redaction_rules.json, copied into dist/ at build): the key rule (a mapping key,
// a change's `field`, the key of a `key=value` pair names a secret) and the value rule
// (credential formats in any string, gitleaks' maintained set and auditq's own; card numbers
// masked to their last four).
import { readFileSync } from "node:fs";

import { Automaton } from "./automaton.js";

export const REDACTED = "[REDACTED]";
const MAX_DEPTH = 200; // nesting redacted; anything deeper is replaced whole (as in Python)
const KEY_CACHE_MAX = 8192; // keys remembered: a service has few distinct keys
const NOTHING = { rules: undefined, stem: false } as const;
const CLEAN_CACHE_MAX = 16_384; // strings remembered by the pre-check
const CLEAN_CACHED_MIN_CHARS = 24; // shorter strings are read each time
const CLEAN_CACHED_MAX_CHARS = 64; // longer strings are checked each time (bounded memory)

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
const RULES: CompiledRule[] = [...data.local_tokens, ...data.tokens].map((rule) => ({
  keywords: rule.keywords,
  regex: new RegExp(rule.regex, "gd"),
  test: new RegExp(rule.regex),
  group: rule.group,
  entropy: rule.entropy,
  allow: (rule.allow ?? []).map(compileAllow),
}));

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
const STRING_STEMS = [
  ...["pass", "pwd", "secret", "token", "cookie", "cred", "authoriz", "jwt", "otp", "key"],
  ...["session", "backup", "recovery", "2fa", "mfa", "sig", "bearer", "basic", "-----", "://"],
  "%3d",
];

const PART_RE = /[A-Za-z]+|[0-9]+/g; // between separators; digits stand alone
const WORD_RE = /[A-Z]+(?![a-z])|[A-Z]?[a-z]+/g; // a part cut on case changes

/** The lowercase words a key is made of: `userPassword2` -> user, password, 2. */
export function keyWords(key: string): string[] {
  const words: string[] = [];
  for (const part of key.match(PART_RE) ?? []) {
    const pieces = part.match(WORD_RE) ?? [part];
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
  /** The stems of the string rules that need a key: auditq's, and the extra keys' words. */
  readonly stems: string[];

  constructor(extraKeys: Iterable<string> = []) {
    this.extras = new Set([...extraKeys].map(normalize).filter((key) => key));
    const extraStems = [...extraKeys].map((key) =>
      keyWords(key).reduce((a, b) => (b.length > a.length ? b : a), normalize(key)),
    );
    this.stems = [...new Set([...STRING_STEMS, ...extraStems])].filter((stem) => stem);
  }

  isSensitive(key: string): boolean {
    let known = this.cache.get(key);
    if (known === undefined) {
      known = this.check(key);
      if (this.cache.size >= KEY_CACHE_MAX) this.cache.clear();
      this.cache.set(key, known);
    }
    return known;
  }

  private check(key: string): boolean {
    const words = keyWords(key);
    if (words.length === 0) return false;
    if ((key.match(PART_RE) ?? []).some(isGluedSecret)) return true;
    if (this.extras.size > 0 && this.namesExtra(words)) return true;
    if (QUANTITIES.has(words[0]!) && words.length > 1) return false;
    const last = words.length - 1;
    const lastWord = words[last]!;
    if (FINAL_WORDS.has(lastWord)) {
      // "key", "auth", "session", "pin"… hold a secret only as the key's last word, and not
      // after a word that makes them something else ("primary_key", "oauth").
      const before = last > 0 ? words[last - 1]! : "";
      if (!NOT_BEFORE_FINAL.get(lastWord)?.has(before)) return true;
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
      if (allowed(GLOBAL_ALLOW, secret, whole, line)) continue;
      if (rule.allow.some((allow) => allowed(allow, secret, whole, line))) continue;
      spans.push([span[0], span[1]]);
    }
  }
  if (spans.length === 0) return text;
  spans.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  let out = "";
  let pos = 0;
  for (const [start, end] of spans) {
    if (end <= pos) continue; // inside a span already redacted
    out += text.slice(pos, Math.max(pos, start)) + REDACTED;
    pos = end;
  }
  return out + text.slice(pos);
}

const PEM_RE =
  /-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----[\s\S]*?(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|$(?![\s\S]))/g;
const URL_USERINFO_RE = /(?<![\w+.-])([a-z][a-z0-9+.-]*:\/\/[^\s:@/?#[\]"'<>]*:)([^\s/?#"'<>]+)@/gi;
const KEY_RE = /(?<![\w.-])([\w.-]+)(\\?["'])?[ \t]*([:=])[ \t]*/g;
const AUTH_SCHEME_RE = /(?:bearer|basic|digest|token|negotiate)[ \t]+/iy;
const VALUE_RE =
  /\[REDACTED\]|(["'])(?:(?!\1)[^\\\r\n]|\\.)*\1?|(\\["'])(?:[^\\\r\n]|\\[^"'\r\n])*(?:\\["'])?|\[[^[\]]*\]|\{[^{}]*\}|[^\s&,;"'\])}[{][^\s&,;"'\])}]*/y;
const COOKIE_VALUE_RE = /(["'])(?:(?!\1)[^\\\r\n]|\\.)*\1?|[^\r\n"'\\]*[^\s"'\\]/y;
const ENCODED_PAIR_RE = /(?<![\w.-])([\w.-]+)%3[dD]((?:(?!%26)[^\s&"'])+)/g;
const BARE_AUTH_RE = /(?<![\w-])(bearer|basic)([ \t]+)([\w.~+/-]+=*)/gi;
const CREDENTIAL_MIN_PLAIN_LEN = 20;

// Card numbers, as service/redaction.py masks them: 13 to 19 digits, maybe in groups (4-4-4-4,
// 4-6-5), starting with 2-6, Luhn-valid: all but the last four digits become "*". Python's
// \d and \w are Unicode: \p{Nd} and [\p{L}\p{N}_] here. The quick test (ASCII digits, as
// Python's) runs on text with a run of 13 digits/separators; only its hits meet the rule.
const CARD_MIN_CHARS = 13;
const CARD_KEEP = 4; // digits left at the end of a masked card number
const CARD_QUICK_RE = /[2-6][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{4}/;
const CARD_RE = new RegExp(
  String.raw`(?<![\p{L}\p{N}_-])(?<!\p{Nd}\.)(?:[2-6]\p{Nd}{12,18}|[2-6]\p{Nd}{3}([ -])\p{Nd}{4}\1\p{Nd}{4}\1\p{Nd}{1,7}` +
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

function mayHoldCard(text: string): boolean {
  if (text.length < CARD_MIN_CHARS || !CARD_QUICK_RE.test(text)) return false;
  for (const match of text.matchAll(CARD_RE)) if (maskCard(match[0]) !== undefined) return true;
  return false;
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

/** The value rule, and the key rule on `key=value` pairs inside text. */
export class Redactor {
  readonly keys: KeyRule;
  private readonly automaton: Automaton;
  private readonly keywordRules: CompiledRule[][]; // by word id; [] for a stem
  // Strings already checked: events repeat most of their strings (types, paths, names).
  private readonly clean = new Map<string, boolean>();
  private readonly keyVerdicts = new Map<string, boolean>(); // key -> needs redaction

  constructor(extraKeys: Iterable<string> = []) {
    this.keys = new KeyRule(extraKeys);
    const keywords = [...RULES_BY_KEYWORD.keys()];
    this.keywordRules = keywords.map((keyword) => RULES_BY_KEYWORD.get(keyword)!);
    for (const _ of this.keys.stems) this.keywordRules.push([]);
    this.automaton = new Automaton([...keywords, ...this.keys.stems]);
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

  /** Return `text` with every credential it carries replaced by [REDACTED]. */
  redactString(text: string): string {
    const { rules, stem } = this.scan(text);
    if (!stem) return maskCards(rules === undefined ? text : redactTokens(text, rules));
    let out = text.replace(PEM_RE, REDACTED);
    if (rules !== undefined) out = redactTokens(out, rules);
    out = redactUrlPasswords(out);
    out = redactUrlPasswords(this.redactPairs(out));
    out = out.replace(ENCODED_PAIR_RE, (whole, key: string, value: string) =>
      value === REDACTED || !this.keys.isSensitive(key) ? whole : `${key}%3D${REDACTED}`,
    );
    out = out.replace(BARE_AUTH_RE, (whole, scheme: string, gap: string, cred: string) => {
      // Prose ("basic authentication") survives; real credentials carry marks or length.
      const plain = !/[0-9._~+/=]/.test(cred) && !/[A-Z]/.test(cred.slice(1));
      return plain && cred.length < CREDENTIAL_MIN_PLAIN_LEN ? whole : `${scheme}${gap}${REDACTED}`;
    });
    return maskCards(out);
  }

  /** The pre-check over an event: false means no rule would change any of it (one walk:
   * each key asked of the key rule, each string of the string rules; both remembered). */
  mayHoldSecret(value: unknown, depth = 0): boolean {
    if (typeof value === "string") return this.stringMayHoldSecret(value);
    if (typeof value === "number") return maskCardNumber(value) !== undefined;
    if (value === null || typeof value !== "object") return false;
    if (depth >= MAX_DEPTH) return true;
    if (Array.isArray(value)) {
      for (const item of value) if (this.mayHoldSecret(item, depth + 1)) return true;
      return false;
    }
    const mapping = value as Record<string, unknown>;
    for (const key in mapping) {
      let keyHolds = this.keyVerdicts.get(key);
      if (keyHolds === undefined) {
        keyHolds = this.keys.isSensitive(key) || this.stringMayHoldSecret(key);
        if (this.keyVerdicts.size >= KEY_CACHE_MAX) this.keyVerdicts.clear();
        this.keyVerdicts.set(key, keyHolds);
      }
      if (keyHolds) return true;
      const item = mapping[key];
      if (typeof item === "string") {
        if (this.stringMayHoldSecret(item)) return true;
        // A diff's "field", a pair's "name": a sensitive one hides the value beside it.
        if (key === DIFF_FIELD && (DIFF_VALUES[0]! in mapping || DIFF_VALUES[1]! in mapping)) {
          if (this.keys.isSensitive(item)) return true;
        } else if (PAIR_NAME_SET.has(key) && PAIR_VALUES.some((name) => name in mapping)) {
          if (this.keys.isSensitive(item)) return true;
        }
      } else if (this.mayHoldSecret(item, depth + 1)) {
        return true;
      }
    }
    return false;
  }

  private stringMayHoldSecret(text: string): boolean {
    // A short string is read faster than it is looked up (and unique ones would only churn
    // the memory); a long one is read each time (bounded memory).
    const cacheable = text.length > CLEAN_CACHED_MIN_CHARS && text.length <= CLEAN_CACHED_MAX_CHARS;
    if (cacheable) {
      const known = this.clean.get(text);
      if (known !== undefined) return known;
    }
    let holds = false;
    // Most strings hold no keyword at all: one pass that stops at the first tells.
    const { rules, stem } =
      this.automaton.firstHit(text) === undefined ? NOTHING : this.scan(text);
    if (stem) {
      holds = true;
    } else if (rules !== undefined) {
      for (const rule of rules) {
        if (rule.test.test(text)) {
          holds = true;
          break;
        }
      }
    }
    if (!holds && text.length >= CARD_MIN_CHARS) holds = mayHoldCard(text);
    if (cacheable) {
      if (this.clean.size >= CLEAN_CACHE_MAX) this.clean.clear();
      this.clean.set(text, holds);
    }
    return holds;
  }

  /** Return JSON-like data with secrets redacted (a copy where anything changed). */
  redact(value: unknown, depth = 0): unknown {
    if (typeof value === "string") return this.redactString(value);
    if (typeof value === "number") return maskCardNumber(value) ?? value;
    if (value === null || typeof value !== "object") return value;
    if (depth >= MAX_DEPTH) return REDACTED;
    if (Array.isArray(value)) return value.map((item) => this.redact(item, depth + 1));
    const mapping = value as Record<string, unknown>;
    const hidden = new Set<string>();
    const field = mapping[DIFF_FIELD];
    if (typeof field === "string" && this.keys.isSensitive(field)) {
      for (const key of DIFF_VALUES) hidden.add(key);
    }
    // {"name": "password", "value": "…"}: a pair that names its secret in another key.
    for (const name of PAIR_NAMES) {
      const named = mapping[name];
      if (typeof named === "string" && this.keys.isSensitive(named)) {
        for (const key of PAIR_VALUES) if (key !== name) hidden.add(key);
      }
    }
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(mapping)) {
      if (hidden.has(key) || this.keys.isSensitive(key)) {
        out[key] = REDACTED;
      } else {
        out[this.redactString(key)] = this.redact(item, depth + 1);
      }
    }
    return out;
  }

  private redactPairs(text: string): string {
    let out = "";
    let pos = 0;
    KEY_RE.lastIndex = 0;
    for (const match of text.matchAll(KEY_RE)) {
      const key = match[1]!;
      const index = match.index!;
      if (index < pos || !this.keys.isSensitive(key)) continue;
      let start = index + match[0].length;
      const words = keyWords(key);
      const last = words[words.length - 1];
      if (last === "authorization") {
        AUTH_SCHEME_RE.lastIndex = start;
        if (AUTH_SCHEME_RE.exec(text)) start = AUTH_SCHEME_RE.lastIndex;
      }
      const valueRe = last === "cookie" && match[3] === ":" ? COOKIE_VALUE_RE : VALUE_RE;
      valueRe.lastIndex = start;
      const value = valueRe.exec(text);
      if (value === null) continue;
      const quote = value[1] ?? value[2] ?? match[2] ?? "";
      out += text.slice(pos, start) + quote + REDACTED + quote;
      pos = start + value[0].length;
    }
    return out + text.slice(pos);
  }
}

function redactUrlPasswords(text: string): string {
  return text.replace(URL_USERINFO_RE, (_whole, head: string) => `${head}${REDACTED}@`);
}
