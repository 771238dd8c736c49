// Find which of many lowercase ASCII words occur in a text, in one pass over it.
//
// Written by hand (an Aho-Corasick automaton, flattened into typed arrays) because the
// redaction pre-check runs on every captured event and must cost about a microsecond: a
// RegExp alternation of the ~300 keywords costs 10-30 µs on a 600-character event, and the
// npm Aho-Corasick packages keep their automaton in objects and maps, several times slower.
const ALPHABET = 128; // ASCII; every other character is a position no word can cross

export class Automaton {
  // Characters are mapped to classes (0: in no word), so that the table stays small enough
  // for the processor's cache: state * classes + class -> state.
  private readonly classOf = new Uint8Array(ALPHABET);
  private readonly classes: number;
  private readonly next: Uint32Array;
  private readonly ends: Uint8Array; // state -> 1 when a word ends there
  private readonly outputs: Int32Array[]; // state -> the ids of the words that end there

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
    this.next = next;
    this.outputs = ends.map((ids) => Int32Array.from(new Set(ids)));
    this.ends = Uint8Array.from(this.outputs, (ids) => (ids.length > 0 ? 1 : 0));
  }

  /** Read `text` from `from` in `state` (the start state, or one a previous hit returned),
   * stopping at the first position where a word ends: [the state there (`hits` names the
   * words), the position]; undefined when no word ends. */
  firstHit(text: string, from = 0, state = 0): [number, number] | undefined {
    const { next, ends, classOf, classes } = this;
    for (let i = from; i < text.length; i++) {
      let ch = text.charCodeAt(i);
      if (ch >= 65 && ch <= 90) ch += 32; // A-Z: lowercase
      const c = ch < ALPHABET ? classOf[ch]! : 0; // 0: in no word
      state = next[state * classes + c]!;
      if (ends[state] === 1) return [state, i];
    }
    return undefined;
  }

  /** The ids of the words that end in `state`. */
  hits(state: number): Int32Array {
    return this.outputs[state]!;
  }

  /** Call `found(id)` for every occurrence of a word in `text`, case-insensitively. */
  scan(text: string, found: (id: number) => void): void {
    const { next, ends, classOf, classes } = this;
    let state = 0;
    for (let i = 0; i < text.length; i++) {
      let ch = text.charCodeAt(i);
      if (ch >= 65 && ch <= 90) ch += 32; // A-Z: lowercase
      const c = ch < ALPHABET ? classOf[ch]! : 0; // 0: in no word
      state = next[state * classes + c]!;
      if (ends[state] === 1) {
        const ids = this.outputs[state]!;
        for (let k = 0; k < ids.length; k++) found(ids[k]!);
      }
    }
  }
}
