/**
 * State slots for models with per-sequence recurrent state (JambaLM's Mamba layers): the paged cache holds
 * `numSlots` rows of state per recurrent layer, and every running sequence owns one row between steps. The
 * engine takes a slot when a sequence is first fed and gives it back when the sequence stops running
 * (finished, aborted, or preempted by recomputation, whose next prefill starts again from position 0 and so
 * from a zero state).
 *
 * @example
 * ```ts
 * import { BlockAllocator, Scheduler, StateSlots } from "seqlab";
 * const sch = new Scheduler(new BlockAllocator(8, 4));
 * const g = sch.addGroup([1, 2, 3]);
 * sch.schedule(); // g's sequence is running now
 * const slots = new StateSlots(2);
 * console.log(slots.acquire(g.seqs[0]), slots.numUsed); // 0 1
 * sch.finishSequence(g.seqs[0], "length");
 * console.log(slots.releaseStopped(), slots.numUsed); // 1 0
 * ```
 * @module
 */

import type { Sequence } from "./sequence.ts";

/** A pool of state slots handed to running sequences, lowest free slot first. */
export class StateSlots {
  /** Slots in the pool. */
  readonly numSlots: number;
  #free: number[];
  #of = new Map<Sequence, number>();

  /** A pool of `numSlots` free slots. */
  constructor(numSlots: number) {
    if (!Number.isInteger(numSlots) || numSlots < 1) {
      throw new Error(`StateSlots: numSlots must be a positive integer, got ${numSlots}`);
    }
    this.numSlots = numSlots;
    this.#free = Array.from({ length: numSlots }, (_, i) => i);
  }

  /** Slots held. */
  get numUsed(): number {
    return this.#of.size;
  }

  /** The slot a sequence holds, or undefined. */
  slotOf(seq: Sequence): number | undefined {
    return this.#of.get(seq);
  }

  /** Gives `seq` the lowest free slot; throws when it already holds one or none is free. */
  acquire(seq: Sequence): number {
    if (this.#of.has(seq)) {
      throw new Error(`StateSlots.acquire: sequence ${seq.id} already holds slot ${this.#of.get(seq)}`);
    }
    if (this.#free.length === 0) {
      throw new Error(
        `StateSlots.acquire: all ${this.numSlots} slots are held; sequence ${seq.id} gets none ` +
          `(more sequences running than maxNumSeqs?)`,
      );
    }
    let best = 0;
    for (let i = 1; i < this.#free.length; i++) if (this.#free[i] < this.#free[best]) best = i;
    const slot = this.#free.splice(best, 1)[0];
    this.#of.set(seq, slot);
    return slot;
  }

  /** Frees the slot `seq` holds; false when it holds none. */
  release(seq: Sequence): boolean {
    const slot = this.#of.get(seq);
    if (slot === undefined) return false;
    this.#of.delete(seq);
    this.#free.push(slot);
    return true;
  }

  /** Frees the slots of sequences no longer running (finished, waiting again, swapped); returns how many. */
  releaseStopped(): number {
    let n = 0;
    for (const seq of [...this.#of.keys()]) if (seq.status !== "running" && this.release(seq)) n++;
    return n;
  }
}
