/**
 * The kernel's input history (what `history_request` answers), kept on disk: one JSON line per stored
 * cell in a file of the kernel's cell directory, so the kernel's memory does not grow with the number of
 * cells run (as ipykernel keeps its history in SQLite). The last few entries stay in memory for the usual
 * `tail` request; any other request reads the file.
 *
 * @module
 */

/** One stored cell: its execution count, its code and the text/plain of its result (or null). */
export interface HistoryEntry {
  line: number;
  input: string;
  output: string | null;
}

/** Entries kept in memory as well (a `tail` request for at most this many reads no file). */
const RECENT = 64;

/** An append-only history file with its most recent entries in memory. */
export class HistoryLog {
  private recent: HistoryEntry[] = [];
  private count = 0;
  private file: string;

  /** Keeps the history in `dir`/history.jsonl (created on the first entry). */
  constructor(dir: string) {
    this.file = `${dir}/history.jsonl`;
  }

  /** Entries stored so far. */
  get size(): number {
    return this.count;
  }

  /**
   * Stores one entry: appended to the file, and to the recent ones. History is a convenience, never the
   * cell's business: if the file cannot be written (a full disk), the entry is kept among the recent ones
   * only, and the cell runs on.
   */
  add(e: HistoryEntry): void {
    try {
      Deno.writeTextFileSync(this.file, JSON.stringify(e) + "\n", { append: true });
    } catch { /* see above */ }
    this.count++;
    this.recent.push(e);
    if (this.recent.length > RECENT) this.recent.shift();
  }

  /** The last `n` entries (from memory when n <= RECENT). */
  tail(n: number): HistoryEntry[] {
    if (n <= 0) return [];
    if (n <= this.recent.length || this.count === this.recent.length) return this.recent.slice(-n);
    return this.all().slice(-n);
  }

  /** Every entry, in order, read from the file. */
  all(): HistoryEntry[] {
    if (this.count === 0) return [];
    let text: string;
    try {
      text = Deno.readTextFileSync(this.file);
    } catch {
      return [...this.recent]; // the file went away (a cleaned temporary directory): what memory has
    }
    const out: HistoryEntry[] = [];
    for (const line of text.split("\n")) {
      if (!line) continue;
      try {
        out.push(JSON.parse(line) as HistoryEntry);
      } catch { /* a line cut short by a full disk: skipped */ }
    }
    return out;
  }
}
