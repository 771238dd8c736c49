// Find which of many lowercase ASCII words occur in a text, in one pass over it.
//
// Written by hand (an Aho-Corasick automaton, flattened into typed arrays) because the
// redaction pre-check runs on every captured event and must cost about a microsecond: a
// RegExp alternation of the ~300 keywords costs 10-30 µs on a 600-character event, and the
// npm Aho-Corasick packages keep their automaton in objects and maps, several times slower.
const ALPHABET = 128; // ASCII; every other character is a position no word can cross
const BYTES = 256; // the class table covers a byte (its upper half: in no word)

/** Where a reading of a part of a text stands: the next position, the state there, the end. */
export interface Cursor {
  at: number;
  state: number;
  end: number;
}

export class Automaton {
  // Characters are mapped to classes (0: in no word; A-Z as a-z), so that the table stays
  // small enough for the processor's cache. A state is the offset of its row (state number
  // * classes): row + class -> the next state's row, written ~row (negative) when a word
  // ends there, so that reading a character is one lookup and one test.
  private readonly classOf = new Uint8Array(BYTES);
  private readonly classes: number;
  private readonly next: Int32Array;
  private readonly outputs: Int32Array[]; // state number -> the ids of the words that end there

  constructor(words: readonly string[]) {
    const goto: Array<Map<number, number>> = [new Map()];
    const ends: number[][] = [[]];
    words.forEach((word, id) => {
      let state = 0;
      for (let i = 0; i < word.length; i++) {
        const ch = word.charCodeAt(i);
        if (ch >= ALPHABET) throw new Error(`not an ASCII word: ${JSON.stringify(word)}`);
        let to = goto[state]!.get(ch);
        if (to === undefined) {
          to = goto.length;
          goto.push(new Map());
          ends.push([]);
          goto[state]!.set(ch, to);
        }
        state = to;
      }
      ends[state]!.push(id);
    });
    let classes = 1;
    const charOf = [0];
    for (const word of words) {
      for (let i = 0; i < word.length; i++) {
        const ch = word.charCodeAt(i);
        if (this.classOf[ch] === 0) {
          this.classOf[ch] = classes++;
          charOf.push(ch);
        }
      }
    }
    const states = goto.length;
    const next = new Uint32Array(states * classes);
    const fail = new Uint32Array(states);
    const queue: number[] = [];
    for (let c = 1; c < classes; c++) {
      const to = goto[0]!.get(charOf[c]!) ?? 0;
      next[c] = to;
      if (to !== 0) queue.push(to);
    }
    // Breadth first: a state's fallback is shallower, so its row is complete already.
    for (let head = 0; head < queue.length; head++) {
      const state = queue[head]!;
      ends[state]!.push(...ends[fail[state]!]!);
      for (let c = 1; c < classes; c++) {
        const to = goto[state]!.get(charOf[c]!);
        if (to === undefined) {
          next[state * classes + c] = next[fail[state]! * classes + c]!;
        } else {
          fail[to] = next[fail[state]! * classes + c]!;
          next[state * classes + c] = to;
          queue.push(to);
        }
      }
    }
    this.classes = classes;
    this.outputs = ends.map((ids) => Int32Array.from(new Set(ids)));
    this.next = Int32Array.from(next, (to) => (this.outputs[to]!.length > 0 ? ~(to * classes) : to * classes));
    for (let ch = 65; ch <= 90; ch++) this.classOf[ch] = this.classOf[ch + 32]!; // A-Z: lowercase
  }

  /** Read `bytes` (a text, one byte a character) up to `end`, from `from` in `state` (the
   * start state, or one a previous hit returned), stopping at the first position where a
   * word ends: [the state there (`hits` names the words), the position]; undefined when no
   * word ends. Bytes read faster than a string's characters (no check of the string's kind
   * per character): the pre-check over a whole encoded event. */
  firstHit(bytes: Uint8Array, end: number, from = 0, state = 0): [number, number] | undefined {
    const { next, classOf } = this;
    let row = state;
    for (let i = from; i < end; i++) {
      const to = next[row + classOf[bytes[i]!]!]!;
      if (to < 0) return [~to, i];
      row = to;
    }
    return undefined;
  }

  /** Read two parts of `bytes` at once, each from its cursor (`at`, `state`) to its `end`:
   * two chains of lookups that the processor overlaps, where one text waits on each lookup
   * in turn. Stop where a word ends in either: return which (0: `a`, 1: `b`), whose cursor
   * then holds the position and the state there (`hits` names the words); -1 when both
   * parts are read. The other cursor holds where its part goes on. */
  firstHitOfTwo(bytes: Uint8Array, a: Cursor, b: Cursor): number {
    const { next, classOf } = this;
    let ia = a.at;
    let ib = b.at;
    let ra = a.state;
    let rb = b.state;
    const ea = a.end;
    const eb = b.end;
    for (; ia < ea && ib < eb; ia++, ib++) {
      const ta = next[ra + classOf[bytes[ia]!]!]!;
      const tb = next[rb + classOf[bytes[ib]!]!]!;
      if ((ta | tb) < 0) {
        if (ta < 0) {
          [a.at, a.state, b.at, b.state] = [ia, ~ta, ib, rb]; // b's byte is read again
          return 0;
        }
        [a.at, a.state, b.at, b.state] = [ia + 1, ta, ib, ~tb];
        return 1;
      }
      ra = ta;
      rb = tb;
    }
    [a.at, a.state, b.at, b.state] = [ia, ra, ib, rb];
    for (const [which, cursor] of [[0, a], [1, b]] as const) {
      if (cursor.at >= cursor.end) continue;
      const hit = this.firstHit(bytes, cursor.end, cursor.at, cursor.state);
      if (hit !== undefined) {
        [cursor.state, cursor.at] = hit;
        return which;
      }
      cursor.at = cursor.end;
    }
    return -1;
  }

  /** The class of a character beyond a byte: Kelvin's K reads as "k", the dotted capital I
   * and the dotless small i as "i" (service/redaction.py's _lower); any other is in no word. */
  private classOfWide(ch: number): number {
    if (ch === 0x212a) return this.classOf[0x6b]!;
    return ch === 0x130 || ch === 0x131 ? this.classOf[0x69]! : 0;
  }

  /** The ids of the words that end in `state`. */
  hits(state: number): Int32Array {
    return this.outputs[state / this.classes]!;
  }

  /** Call `found(id)` for every occurrence of a word in `text`, case-insensitively. */
  scan(text: string, found: (id: number) => void): void {
    const { next, classOf } = this;
    let row = 0;
    for (let i = 0; i < text.length; i++) {
      const ch = text.charCodeAt(i);
      row = next[row + (ch < BYTES ? classOf[ch]! : this.classOfWide(ch))]!;
      if (row < 0) {
        row = ~row;
        const ids = this.hits(row);
        for (let k = 0; k < ids.length; k++) found(ids[k]!);
      }
    }
  }
}
