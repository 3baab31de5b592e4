/**
 * Sequences and sequence groups, the units the `Scheduler` manages. A group is one request: a prompt and
 * the sequences generated from it (one, or n samples, or beams), which share the prompt's KV blocks. The
 * scheduler owns their state; the engine reads it and changes it only through the scheduler's methods
 * (`appendToken`, `fork`, `finishSequence`, `removeSequence`, `abortGroup`).
 *
 * @example
 * ```ts
 * import { BlockAllocator, Scheduler } from "seqlab";
 * const s = new Scheduler(new BlockAllocator(16, 4));
 * const g = s.addGroup([1, 2, 3], { maxSeqs: 2 });
 * const seq = g.seqs[0];
 * console.log(g.status, seq.length, seq.promptLength, seq.numPending); // waiting 3 3 3
 * ```
 * @module
 */

/** Why a sequence finished: a stop string or token, the length limit, the end-of-sequence token, or an abort. */
export type FinishReason = "stop" | "length" | "eos" | "abort";

/** Where a sequence is: waiting for (re)admission, running (blocks on the device), swapped (blocks on the host), finished. */
export type SequenceStatus = "waiting" | "running" | "swapped" | "finished";

/** Where a group is; "finished" when every sequence finished, "aborted" when the scheduler or caller aborted it. */
export type GroupStatus = "waiting" | "running" | "swapped" | "finished" | "aborted";

/**
 * One token sequence: the prompt followed by its generated tokens, with the block table that holds its KV
 * cache. Positions `0 .. numComputed - 1` have their keys and values written (or will have, once the last
 * scheduled step runs); positions `numComputed .. length - 1` are pending and are fed in the next steps.
 */
export class Sequence {
  /** unique over the scheduler's lifetime */
  readonly id: number;
  /** the request this sequence belongs to */
  readonly group: SequenceGroup;
  /** prompt then generated tokens */
  readonly tokens: number[];
  /** tokens of the original prompt; `tokens.slice(promptLength)` are the generated ones */
  readonly promptLength: number;
  /** tokens whose KV is in the cache (or scheduled to be written by the last `schedule()`) */
  numComputed = 0;
  /** block ids: device blocks while running, host blocks while swapped, empty while waiting */
  blockTable: number[] = [];
  /** see `SequenceStatus` */
  status: SequenceStatus = "waiting";
  /** set when finished */
  finishReason: FinishReason | undefined = undefined;
  /** chained hashes of the first full blocks (prefix caching), one per block hashed so far */
  blockHashes: number[] = [];
  /** set after a hash collision: this sequence's later blocks are not cached */
  cacheChainBroken = false;

  /** Made by the `Scheduler` (`addGroup`, `fork`). */
  constructor(id: number, group: SequenceGroup, tokens: number[], promptLength: number) {
    this.id = id;
    this.group = group;
    this.tokens = tokens;
    this.promptLength = promptLength;
  }

  /** Tokens in the sequence (prompt + generated). */
  get length(): number {
    return this.tokens.length;
  }
  /** Generated tokens so far. */
  get outputTokens(): number[] {
    return this.tokens.slice(this.promptLength);
  }
  /** Tokens not yet fed to the model. */
  get numPending(): number {
    return this.tokens.length - this.numComputed;
  }
  /** Whether the sequence has finished (or was removed). */
  get isFinished(): boolean {
    return this.status === "finished";
  }
}

/**
 * One request: its sequences (one at first; the engine forks samples or beams after the prompt's step),
 * arrival order (first come, first served) and the most sequences it may hold at once (`maxSeqs`: n for
 * parallel sampling, the beam width for beam search), which the scheduler reserves against `maxNumSeqs`.
 */
export class SequenceGroup {
  /** the request id */
  readonly id: string;
  /** arrival rank: lower is earlier */
  readonly arrival: number;
  /** the most live sequences the group may hold at a `schedule()` */
  readonly maxSeqs: number;
  /** the group's sequences, live and finished (removed ones are dropped) */
  readonly seqs: Sequence[] = [];
  /** see `GroupStatus` */
  status: GroupStatus = "waiting";
  /** why the group was aborted */
  abortReason: string | undefined = undefined;
  /** times the group was preempted */
  numPreemptions = 0;

  /** Made by the `Scheduler` (`addGroup`). */
  constructor(id: string, arrival: number, maxSeqs: number) {
    this.id = id;
    this.arrival = arrival;
    this.maxSeqs = maxSeqs;
  }

  /** The unfinished sequences. */
  get liveSeqs(): Sequence[] {
    return this.seqs.filter((s) => !s.isFinished);
  }
  /** Whether the group ended (finished or aborted). */
  get isDone(): boolean {
    return this.status === "finished" || this.status === "aborted";
  }
}
