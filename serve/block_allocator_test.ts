// BlockAllocator: invariants under long random operation sequences against a model of the device memory
// (every table reads back its own tokens through copy-on-write and prefix-cache hits), forks diverging,
// prefix-cache hits, LRU eviction, collisions, canAllocate's three answers, misuse errors.
import { describe, expect, test } from "vitest";
import { Rng } from "./sampling.ts";
import { BlockAllocator, hashBlock, ROOT_HASH } from "./block_allocator.ts";

/** A seeded uniform stream in [0, 1) (the engine's sampling generator) for reproducible random operations. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** A sequence as the random test sees it: its tokens, block table and chained block hashes. */
interface Seq {
  tokens: number[];
  table: number[];
  hashes: number[];
}

/** The device memory model: one token id per slot (what a KV row stands for here). */
class Memory {
  slots: Int32Array;
  constructor(readonly a: BlockAllocator) {
    this.slots = new Int32Array(a.numBlocks * a.blockSize).fill(-1);
  }
  copy([src, dst]: [number, number]) {
    const bs = this.a.blockSize;
    this.slots.copyWithin(dst * bs, src * bs, (src + 1) * bs);
  }
  /** Append the next token of `s` (its KV slot via appendSlot, copying first when the block is shared). */
  append(s: Seq, token: number) {
    const r = this.a.appendSlot(s.table, s.tokens.length);
    if (r.copy) {
      expect(this.a.refCount(r.copy[1])).toBe(1); // the copy is the sequence's own
      this.copy(r.copy);
    }
    this.slots[r.slot] = token;
    s.tokens.push(token);
  }
  /** Every token of `s` read back through its table. */
  read(s: Seq): number[] {
    const bs = this.a.blockSize;
    return s.tokens.map((_, p) => this.slots[s.table[Math.floor(p / bs)] * bs + (p % bs)]);
  }
  /** Register the full blocks of `s` not yet registered. */
  register(s: Seq) {
    const bs = this.a.blockSize;
    while ((s.hashes.length + 1) * bs <= s.tokens.length) {
      const i = s.hashes.length;
      const r = this.a.register(
        s.table[i],
        i ? s.hashes[i - 1] : ROOT_HASH,
        s.tokens.slice(i * bs, (i + 1) * bs),
      );
      expect(r.status).not.toBe("collision");
      s.hashes.push(r.hash);
    }
  }
}

function randomOps(seed: number, ops: number, prefixCaching: boolean) {
  const r = rng(seed);
  const a = new BlockAllocator(64, 4, { enablePrefixCaching: prefixCaching });
  const mem = new Memory(a);
  const seqs: Seq[] = [];
  const prefixes = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 9, 9, 9, 9], [
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
  ]];
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  let copies = 0;
  for (let op = 0; op < ops; op++) {
    const u = r();
    if (u < 0.15 && seqs.length < 24) {
      // a new sequence: often a shared prefix (prefix-cache hits), then random tokens
      const tokens = r() < 0.6 ? pick(prefixes).slice(0, 1 + Math.floor(r() * 12)) : [];
      for (let n = Math.floor(r() * 10); n > 0 || tokens.length === 0; n--) tokens.push(Math.floor(r() * 5));
      const blocks = Math.ceil(tokens.length / a.blockSize);
      if (a.canAllocate(blocks, { watermark: false }) !== "now") continue;
      const hit = a.allocatePrefix(tokens, Math.floor((tokens.length - 1) / a.blockSize));
      const s: Seq = {
        tokens: tokens.slice(0, hit.blocks.length * a.blockSize),
        table: hit.blocks,
        hashes: hit.hashes,
      };
      expect(mem.read(s)).toEqual(s.tokens); // a hit block holds exactly the prefix's tokens
      for (const t of tokens.slice(s.tokens.length)) mem.append(s, t);
      seqs.push(s);
    } else if (u < 0.25 && seqs.length > 0 && seqs.length < 24) {
      const parent = pick(seqs);
      const child: Seq = {
        tokens: parent.tokens.slice(),
        table: a.fork(parent.table),
        hashes: parent.hashes.slice(),
      };
      seqs.push(child);
    } else if (u < 0.85 && seqs.length > 0) {
      const s = pick(seqs);
      const bs = a.blockSize;
      const needs = s.tokens.length % bs === 0 || a.refCount(s.table[s.table.length - 1]) > 1;
      if (needs && a.numAvailable === 0) continue;
      const before = s.table.slice();
      mem.append(s, Math.floor(r() * 5));
      if (s.table[s.table.length - 1] !== before[before.length - 1] && s.table.length === before.length) {
        copies++;
      }
    } else if (u < 0.95 && seqs.length > 0) {
      const i = Math.floor(r() * seqs.length);
      a.freeTable(seqs[i].table);
      seqs.splice(i, 1);
    } else if (prefixCaching && seqs.length > 0) {
      mem.register(pick(seqs));
    }
    if (op % 50 === 0) {
      a.checkTables(seqs.map((s) => s.table));
      for (const s of seqs) expect(mem.read(s)).toEqual(s.tokens);
    }
  }
  a.checkTables(seqs.map((s) => s.table));
  for (const s of seqs) expect(mem.read(s)).toEqual(s.tokens);
  for (const s of seqs) a.freeTable(s.table);
  a.checkTables([]);
  expect(a.numUsed).toBe(0);
  expect(a.numAvailable).toBe(a.numBlocks);
  return { stats: a.stats(), copies };
}

describe("BlockAllocator", () => {
  test("20,000 random ops: refcounts equal table references, nothing lost, every table reads its tokens", () => {
    const { stats, copies } = randomOps(1, 20_000, false);
    expect(copies).toBeGreaterThan(100); // copy-on-write was exercised
    expect(stats.cached).toBe(0);
  });

  test("20,000 random ops with prefix caching: hits, evictions, and still every invariant", () => {
    const { stats, copies } = randomOps(2, 20_000, true);
    expect(copies).toBeGreaterThan(100);
    expect(stats.hits).toBeGreaterThan(100);
    expect(stats.evictions).toBeGreaterThan(10);
    expect(stats.collisions).toBe(0);
  });

  test("fork shares every block and allocates nothing; appends diverge by copy-on-write", () => {
    const a = new BlockAllocator(8, 4);
    const mem = new Memory(a);
    const p: Seq = { tokens: [], table: [], hashes: [] };
    for (const t of [1, 2, 3, 4, 5, 6]) mem.append(p, t);
    expect(p.table).toEqual([0, 1]);
    const c1: Seq = { tokens: p.tokens.slice(), table: a.fork(p.table), hashes: [] };
    const c2: Seq = { tokens: p.tokens.slice(), table: a.fork(p.table), hashes: [] };
    expect(a.numUsed).toBe(2);
    expect([a.refCount(0), a.refCount(1)]).toEqual([3, 3]);
    expect(a.appendSlot(c1.table, 6)).toEqual({ slot: 2 * 4 + 2, copy: [1, 2] });
    mem.copy([1, 2]);
    mem.slots[10] = 70;
    c1.tokens.push(70);
    mem.append(c2, 80); // copies block 1 into block 3
    expect(c2.table).toEqual([0, 3]);
    expect(a.refCount(1)).toBe(1);
    expect(a.appendSlot(p.table, 6)).toEqual({ slot: 1 * 4 + 2 }); // the last holder writes in place
    mem.slots[6] = 90;
    p.tokens.push(90);
    expect([mem.read(p), mem.read(c1), mem.read(c2)]).toEqual([
      [1, 2, 3, 4, 5, 6, 90],
      [1, 2, 3, 4, 5, 6, 70],
      [1, 2, 3, 4, 5, 6, 80],
    ]);
    expect(a.refCount(0)).toBe(3); // the full first block stays shared
    for (const s of [p, c1, c2]) a.freeTable(s.table);
    a.checkTables([]);
  });

  test("prefix cache: a hit reuses the block, cached blocks stay until evicted in LRU order", () => {
    const a = new BlockAllocator(4, 2, { enablePrefixCaching: true, watermark: 0 });
    const t0 = a.allocate(), t1 = a.allocate();
    const h0 = a.register(t0, ROOT_HASH, [1, 2]);
    const h1 = a.register(t1, h0.hash, [3, 4]);
    expect([h0.status, h1.status]).toEqual(["registered", "registered"]);
    expect(h1.hash).toBe(hashBlock(hashBlock(ROOT_HASH, [1, 2]), [3, 4]));
    // in use: a second sequence with the same prefix shares both blocks
    const shared = a.allocatePrefix([1, 2, 3, 4, 5], 2);
    expect(shared.blocks).toEqual([t0, t1]);
    expect(a.refCount(t0)).toBe(2);
    expect(a.matchPrefix([1, 2, 9, 9], 2).blocks).toEqual([t0]); // the chain stops at the first miss
    expect(a.matchPrefix([9, 9, 3, 4], 2).blocks).toEqual([]); // same tokens after another parent: no hit
    // freed (last block first): both go to the evictor, t1 before t0
    a.freeTable(shared.blocks);
    a.freeTable([t0, t1]);
    expect(a.stats()).toMatchObject({ free: 2, cached: 2, used: 0, hits: 2, queries: 2 });
    // a hit revives a cached block from the evictor
    const again = a.allocatePrefix([1, 2, 3], 1);
    expect(again.blocks).toEqual([t0]);
    expect(a.numCached).toBe(1);
    a.free(t0);
    // the free list is used first, then the least recently freed cached block (t1, then t0)
    const f = [a.allocate(), a.allocate()];
    expect(f).not.toContain(t0);
    expect(f).not.toContain(t1);
    expect(a.allocate()).toBe(t1);
    expect(a.isCached(t1)).toBe(false); // evicted: its entry is gone
    expect(a.matchPrefix([1, 2, 3, 4], 2).blocks).toEqual([t0]);
    expect(a.allocate()).toBe(t0);
    expect(a.stats().evictions).toBe(2);
    expect(() => a.allocate()).toThrow("BlockAllocator.allocate: out of blocks: all 4 are in use");
    for (let b = 0; b < 4; b++) a.free(b);
    a.checkTables([]);
  });

  test("prefix cache: duplicates stay uncached; a hash collision is a miss and is reported", () => {
    const weak = () => 42; // every block collides
    const a = new BlockAllocator(8, 2, { enablePrefixCaching: true, hash: weak });
    const b0 = a.allocate(), b1 = a.allocate(), b2 = a.allocate();
    expect(a.register(b0, ROOT_HASH, [1, 2]).status).toBe("registered");
    expect(a.register(b1, ROOT_HASH, [1, 2]).status).toBe("duplicate");
    expect(a.register(b2, ROOT_HASH, [5, 6]).status).toBe("collision");
    expect(a.isCached(b1) || a.isCached(b2)).toBe(false);
    expect(a.allocatePrefix([5, 6, 7], 1).blocks).toEqual([]); // same hash, other tokens: a miss
    expect(a.allocatePrefix([1, 2, 7], 1).blocks).toEqual([b0]);
    expect(a.stats()).toMatchObject({ hits: 1, queries: 2, collisions: 2 });
    for (const b of [b0, b0, b1, b2]) a.free(b);
    a.checkTables([]);
  });

  test("canAllocate: never beyond the pool minus the watermark, now, later", () => {
    const a = new BlockAllocator(100, 16, { watermark: 0.05 });
    expect(a.watermarkBlocks).toBe(5);
    expect(a.canAllocate(96)).toBe("never");
    expect(a.canAllocate(96, { watermark: false })).toBe("now");
    expect(a.canAllocate(101, { watermark: false })).toBe("never");
    expect(a.canAllocate(95)).toBe("now");
    const held = Array.from({ length: 90 }, () => a.allocate());
    expect(a.canAllocate(5)).toBe("now");
    expect(a.canAllocate(6)).toBe("later");
    expect(a.canAllocate(10, { watermark: false })).toBe("now");
    expect(a.canAllocate(11, { watermark: false })).toBe("later");
    for (const b of held) a.free(b);
    expect(a.canAllocate(95)).toBe("now");
  });

  test("misuse throws a message naming the method", () => {
    const a = new BlockAllocator(4, 2);
    const b = a.allocate();
    a.free(b);
    expect(() => a.free(b)).toThrow("BlockAllocator.free: block 0 has no reference (double free)");
    expect(() => a.free(7)).toThrow("BlockAllocator.free: block 7 is out of range [0, 4)");
    expect(() => a.retain(b)).toThrow("BlockAllocator.retain: block 0 is free");
    expect(() => a.fork([b])).toThrow("BlockAllocator.fork: block 0 of the table is not in use");
    expect(() => a.appendSlot([], 3)).toThrow(
      "BlockAllocator.appendSlot: position 3 is not in the last block",
    );
    expect(() => a.checkTables([[1]])).toThrow("block 1 has reference count 0 but 1 table references");
    expect(() => new BlockAllocator(0, 16)).toThrow(
      "BlockAllocator: numBlocks must be a positive integer, got 0",
    );
    expect(() => new BlockAllocator(4, 16, { watermark: 1 })).toThrow(
      "watermark must be a fraction in [0, 1)",
    );
  });

  test("hashBlock is deterministic, chained, and spreads small changes", () => {
    const h = hashBlock(ROOT_HASH, [1, 2, 3]);
    expect(h).toBe(hashBlock(ROOT_HASH, [1, 2, 3]));
    expect(Number.isSafeInteger(h) && h >= 0).toBe(true);
    const seen = new Set<number>();
    for (let p = 0; p < 50; p++) for (let t = 0; t < 200; t++) seen.add(hashBlock(p, [t, t + 1]));
    expect(seen.size).toBe(10_000);
    expect(hashBlock(ROOT_HASH, [1, 2])).not.toBe(hashBlock(ROOT_HASH, [2, 1]));
    expect(hashBlock(ROOT_HASH, [0])).not.toBe(hashBlock(ROOT_HASH, [0, 0]));
  });
});
