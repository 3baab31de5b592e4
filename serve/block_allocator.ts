/**
 * The paged KV cache's memory manager: a pool of `numBlocks` physical blocks of `blockSize` token slots each
 * (one block id indexes the same page in every layer's kPool and vPool), handed out to block tables.
 *
 * - A **block table** is a plain `number[]` of block ids: token position `p` of a sequence lives in block
 *   `table[floor(p / blockSize)]` at offset `p % blockSize`, slot `block * blockSize + offset`.
 * - **Reference counts**: a block is shared by every table that lists it (a forked sequence, a prefix-cache
 *   hit). `fork` shares a whole table (allocates nothing); `appendSlot` copies the last block before
 *   writing into it when it is shared (copy-on-write) and returns the copy the device must perform.
 * - **Prefix caching** (`enablePrefixCaching`): a full block's contents are keyed by a chained hash of the
 *   parent block's hash and the block's tokens (`hashBlock`), so equal prefixes give equal keys. A table can
 *   start with cached blocks (`allocatePrefix`); a block whose last reference goes away while it is cached
 *   keeps its contents in an evictor (least recently freed first out) and is reused only when the free list is
 *   empty. Collisions are handled by comparing the parent hash and the tokens on every hit.
 * - A **watermark** (a fraction of the pool) is kept free when admitting new work (`canAllocate`), so that
 *   running sequences can grow a little before anything must be preempted.
 *
 * @example
 * ```ts
 * import { BlockAllocator } from "seqlab";
 * const a = new BlockAllocator(8, 4);
 * const table: number[] = [];
 * for (let p = 0; p < 6; p++) a.appendSlot(table, p); // 6 tokens: 2 blocks
 * const child = a.fork(table); // shares both blocks
 * console.log(a.appendSlot(child, 6).copy); // [1, 2]: the shared last block is copied before the write
 * a.freeTable(table);
 * a.freeTable(child);
 * console.log(a.numUsed); // 0
 * ```
 * @module
 */

/** The hash before a sequence's first block: the root of every hash chain. */
export const ROOT_HASH = 0;

/** A block-to-block copy the device performs: `[src, dst]` (for swaps, src and dst are in different pools). */
export type BlockPair = [src: number, dst: number];

/** `canAllocate`'s answer: never (more than the pool minus the watermark), now, or later (after frees). */
export type CanAllocate = "never" | "now" | "later";

/** What `register` did with a full block. */
export type RegisterStatus =
  /** the block is now the cached copy of its contents (or already was) */
  | "registered"
  /** another block already caches the same contents; this one stays uncached */
  | "duplicate"
  /** another block with different contents holds the same hash; this one stays uncached */
  | "collision"
  /** prefix caching is off */
  | "off";

/** Options of a `BlockAllocator`. */
export interface BlockAllocatorOptions {
  /** fraction of the pool kept free when admitting new work (`canAllocate`); default 0.01 */
  watermark?: number;
  /** cache full blocks by their contents' chained hash for reuse; default false */
  enablePrefixCaching?: boolean;
  /** the block hash (default `hashBlock`); tests pass a weak one to force collisions */
  hash?: (parentHash: number, tokens: ArrayLike<number>) => number;
}

/** Counters of a `BlockAllocator` (`stats()`). */
export interface BlockAllocatorStats {
  /** blocks in the pool */
  numBlocks: number;
  /** blocks on the free list (no contents worth keeping) */
  free: number;
  /** blocks with no reference that keep cached contents (the evictor); allocatable, after the free list */
  cached: number;
  /** blocks with at least one reference */
  used: number;
  /** prefix-cache lookups (full blocks asked for by `allocatePrefix`) */
  queries: number;
  /** prefix-cache lookups answered with a cached block */
  hits: number;
  /** cached blocks evicted to serve an allocation */
  evictions: number;
  /** hash matches whose parent hash or tokens differed (treated as misses) */
  collisions: number;
}

/** `appendSlot`'s result: the slot for the new token, and the copy to perform first if the block was shared. */
export interface AppendResult {
  /** slot number of the new token: `block * blockSize + offset` */
  slot: number;
  /** `[src, dst]` when the last block was shared: copy src into dst on the device before writing the slot */
  copy?: BlockPair;
}

/** A cached block's identity: the hash it is stored under and what that hash was computed from. */
interface CacheEntry {
  hash: number;
  parent: number;
  tokens: Int32Array;
}

/**
 * A deterministic 53-bit chained hash of one full block: two 32-bit multiply-xor lanes (FNV-1a's prime and
 * MurmurHash2's constant, over 32-bit words rather than bytes) fed the parent hash's two halves, the block
 * length and the int32 tokens, each lane finished with MurmurHash3's avalanche, joined into an integer that a
 * float64 holds exactly. Equal (parent, tokens) give equal hashes on every run and platform; different ones
 * collide with probability about 2^-53 per pair, and `BlockAllocator` compares tokens on a hit anyway.
 *
 * @example
 * ```ts
 * import { hashBlock, ROOT_HASH } from "seqlab";
 * const h0 = hashBlock(ROOT_HASH, [1, 2, 3, 4]);
 * console.log(h0 === hashBlock(ROOT_HASH, [1, 2, 3, 4]), Number.isSafeInteger(h0)); // true true
 * console.log(hashBlock(h0, [5, 6, 7, 8]) !== hashBlock(ROOT_HASH, [5, 6, 7, 8])); // true: chained
 * ```
 */
export function hashBlock(parentHash: number, tokens: ArrayLike<number>): number {
  let a = 0x811c9dc5 | 0, b = 0x9747b28c | 0;
  const mix = (w: number) => {
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x5bd1e995);
    b ^= b >>> 15;
  };
  mix(parentHash >>> 0);
  mix(Math.floor(parentHash / 0x100000000) | 0);
  mix(tokens.length);
  for (let i = 0; i < tokens.length; i++) mix(tokens[i] | 0);
  const fmix = (h: number) => {
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    return (h ^ (h >>> 16)) >>> 0;
  };
  return fmix(a) * 0x200000 + (fmix(b) >>> 11); // 32 + 21 bits
}

/**
 * A pool of KV-cache blocks with reference counts, copy-on-write and an optional prefix cache (see the module
 * comment). Every method checks its block ids and throws a message naming the method on misuse (a double
 * free, a block out of range, an allocation from an exhausted pool), before changing anything.
 *
 * @example
 * ```ts
 * import { BlockAllocator } from "seqlab";
 * const a = new BlockAllocator(100, 16, { watermark: 0.1 }); // keeps 10 blocks for running sequences
 * console.log(a.canAllocate(95), a.canAllocate(90), a.canAllocate(20)); // never now now
 * const held = Array.from({ length: 80 }, () => a.allocate());
 * console.log(a.canAllocate(20)); // later: only 20 free, all inside the watermark
 * for (const b of held) a.free(b);
 * ```
 */
export class BlockAllocator {
  /** blocks in the pool */
  readonly numBlocks: number;
  /** token slots per block */
  readonly blockSize: number;
  /** blocks kept free when admitting new work: `floor(watermark * numBlocks)` */
  readonly watermarkBlocks: number;
  /** whether full blocks are cached by contents */
  readonly enablePrefixCaching: boolean;
  #hash: (parentHash: number, tokens: ArrayLike<number>) => number;
  #ref: Int32Array;
  /** a stack: block 0 is handed out first on a fresh pool */
  #free: number[];
  /** blocks with refcount 0 that keep cached contents, least recently freed first (Set keeps insertion order) */
  #evictor = new Set<number>();
  #cache = new Map<number, number>();
  #entry: (CacheEntry | undefined)[];
  #queries = 0;
  #hits = 0;
  #evictions = 0;
  #collisions = 0;

  /**
   * A pool with every block free.
   * @param numBlocks blocks in the pool (>= 1)
   * @param blockSize token slots per block (>= 1; the ops take 8, 16, 32, 64, 128)
   */
  constructor(numBlocks: number, blockSize: number, opts: BlockAllocatorOptions = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) {
      throw new Error(`BlockAllocator: numBlocks must be a positive integer, got ${numBlocks}`);
    }
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new Error(`BlockAllocator: blockSize must be a positive integer, got ${blockSize}`);
    }
    const watermark = opts.watermark ?? 0.01;
    if (!(watermark >= 0 && watermark < 1)) {
      throw new Error(`BlockAllocator: watermark must be a fraction in [0, 1), got ${watermark}`);
    }
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.watermarkBlocks = Math.floor(watermark * numBlocks);
    this.enablePrefixCaching = opts.enablePrefixCaching ?? false;
    this.#hash = opts.hash ?? hashBlock;
    this.#ref = new Int32Array(numBlocks);
    this.#free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.#entry = new Array(numBlocks).fill(undefined);
  }

  /** Blocks on the free list. */
  get numFree(): number {
    return this.#free.length;
  }
  /** Unreferenced blocks holding cached contents (allocatable after the free list). */
  get numCached(): number {
    return this.#evictor.size;
  }
  /** Blocks an allocation can take now: free plus cached. */
  get numAvailable(): number {
    return this.#free.length + this.#evictor.size;
  }
  /** Blocks with at least one reference. */
  get numUsed(): number {
    return this.numBlocks - this.numAvailable;
  }

  /** The reference count of `block` (0 for a free or cached-unreferenced block). */
  refCount(block: number): number {
    this.#check("refCount", block);
    return this.#ref[block];
  }

  /** Whether `block` holds registered prefix-cache contents (referenced or in the evictor). */
  isCached(block: number): boolean {
    this.#check("isCached", block);
    return this.#entry[block] !== undefined;
  }

  /**
   * Whether `n` new blocks can be taken. `watermark` (default true) keeps `watermarkBlocks` in reserve, as
   * admitting new work should; running sequences growing by a slot pass `false`.
   * @returns "never" when `n` exceeds the pool (minus the reserve), "now" when enough blocks are
   * available, else "later".
   */
  canAllocate(n: number, opts: { watermark?: boolean } = {}): CanAllocate {
    const reserve = (opts.watermark ?? true) ? this.watermarkBlocks : 0;
    if (n > this.numBlocks - reserve) return "never";
    return this.numAvailable - n >= reserve ? "now" : "later";
  }

  /**
   * Take one fresh block (reference count 1): from the free list, else by evicting the least recently freed
   * cached block (its cache entry is dropped). Throws when no block is available.
   */
  allocate(): number {
    let b = this.#free.pop();
    if (b === undefined) {
      const lru = this.#evictor.values().next();
      if (lru.done) {
        throw new Error(`BlockAllocator.allocate: out of blocks: all ${this.numBlocks} are in use`);
      }
      b = lru.value;
      this.#evictor.delete(b);
      this.#uncache(b);
      this.#evictions++;
    }
    this.#ref[b] = 1;
    return b;
  }

  /** Add a reference to a block in use, or revive a cached block from the evictor. */
  retain(block: number): void {
    this.#check("retain", block);
    if (this.#ref[block] === 0) {
      if (!this.#evictor.delete(block)) {
        throw new Error(`BlockAllocator.retain: block ${block} is free (no reference, no cached contents)`);
      }
    }
    this.#ref[block]++;
  }

  /**
   * Drop one reference. At zero the block returns to the free list, or to the tail of the evictor if it holds
   * cached contents. Throws on a block with no reference (a double free).
   */
  free(block: number): void {
    this.#check("free", block);
    if (this.#ref[block] === 0) {
      throw new Error(`BlockAllocator.free: block ${block} has no reference (double free)`);
    }
    if (--this.#ref[block] === 0) {
      if (this.#entry[block] !== undefined) this.#evictor.add(block);
      else this.#free.push(block);
    }
  }

  /** A new table sharing every block of `table` (each reference count + 1; allocates nothing). */
  fork(table: readonly number[]): number[] {
    for (const b of table) {
      this.#check("fork", b);
      if (this.#ref[b] === 0) throw new Error(`BlockAllocator.fork: block ${b} of the table is not in use`);
    }
    for (const b of table) this.#ref[b]++;
    return table.slice();
  }

  /** Free every block of `table`, last block first (so a prefix's later blocks are evicted before its first), and empty it. */
  freeTable(table: number[]): void {
    for (let i = table.length - 1; i >= 0; i--) this.free(table[i]);
    table.length = 0;
  }

  /**
   * Make room in `table` for the token at `position`, which must be the next position after the table's
   * filled part: in its last block, or the first of a new one. A new block is allocated when the position
   * starts one; when the last block is shared (reference count > 1) it is replaced by a fresh copy
   * (copy-on-write), and the copy to perform on the device is returned.
   */
  appendSlot(table: number[], position: number): AppendResult {
    const bs = this.blockSize;
    const k = Math.floor(position / bs);
    if (!Number.isInteger(position) || position < 0 || k < table.length - 1 || k > table.length) {
      throw new Error(
        `BlockAllocator.appendSlot: position ${position} is not in the last block or the next one of a table ` +
          `of ${table.length} blocks of ${bs}`,
      );
    }
    if (k === table.length) {
      const nb = this.allocate();
      table.push(nb);
      return { slot: nb * bs + (position % bs) };
    }
    const b = table[k];
    this.#check("appendSlot", b);
    if (this.#ref[b] === 0) {
      throw new Error(`BlockAllocator.appendSlot: block ${b} of the table is not in use`);
    }
    if (this.#ref[b] > 1) {
      const nb = this.allocate();
      this.free(b);
      table[k] = nb;
      return { slot: nb * bs + (position % bs), copy: [b, nb] };
    }
    return { slot: b * bs + (position % bs) };
  }

  /**
   * The longest run of cached full blocks that starts `tokens` (at most `maxBlocks` blocks), without taking
   * references or counting lookups: the blocks and their chained hashes.
   */
  matchPrefix(tokens: ArrayLike<number>, maxBlocks: number): { blocks: number[]; hashes: number[] } {
    const blocks: number[] = [], hashes: number[] = [];
    this.#walk(tokens, maxBlocks, (b, h) => (blocks.push(b), hashes.push(h)));
    return { blocks, hashes };
  }

  /**
   * Start a table with the cached blocks that match the beginning of `tokens` (at most `maxBlocks` full
   * blocks): each hit takes a reference (reviving it from the evictor if needed) and counts as a hit. The
   * caller allocates the rest of the table and must leave at least one token to compute (a hit block is
   * never written).
   * @returns the table (hit blocks) and their chained hashes
   */
  allocatePrefix(tokens: ArrayLike<number>, maxBlocks: number): { blocks: number[]; hashes: number[] } {
    if (!this.enablePrefixCaching) return { blocks: [], hashes: [] };
    const blocks: number[] = [], hashes: number[] = [];
    this.#queries += Math.max(0, Math.min(maxBlocks, Math.floor(tokens.length / this.blockSize)));
    this.#walk(tokens, maxBlocks, (b, h) => (blocks.push(b), hashes.push(h)), true);
    for (const b of blocks) this.retain(b);
    this.#hits += blocks.length;
    return { blocks, hashes };
  }

  /**
   * Record that `block` (in use, full, its KV written) holds `tokens` after the prefix hashed `parentHash`,
   * so later `allocatePrefix` calls can reuse it. Returns the block's hash (the next block's parent) and
   * what happened; after a "collision" the caller must stop registering that sequence's later blocks, whose
   * hashes chain from contents that the cache does not hold.
   */
  register(
    block: number,
    parentHash: number,
    tokens: ArrayLike<number>,
  ): { hash: number; status: RegisterStatus } {
    this.#check("register", block);
    if (tokens.length !== this.blockSize) {
      throw new Error(
        `BlockAllocator.register: a block holds ${this.blockSize} tokens, got ${tokens.length}`,
      );
    }
    const hash = this.#hash(parentHash, tokens);
    if (!this.enablePrefixCaching) return { hash, status: "off" };
    if (this.#ref[block] === 0) throw new Error(`BlockAllocator.register: block ${block} is not in use`);
    const mine = this.#entry[block];
    if (mine !== undefined) {
      if (mine.hash === hash && sameContents(mine, parentHash, tokens)) return { hash, status: "registered" };
      throw new Error(`BlockAllocator.register: block ${block} is already cached with other contents`);
    }
    const other = this.#cache.get(hash);
    if (other !== undefined) {
      if (sameContents(this.#entry[other]!, parentHash, tokens)) return { hash, status: "duplicate" };
      this.#collisions++;
      return { hash, status: "collision" };
    }
    this.#cache.set(hash, block);
    this.#entry[block] = { hash, parent: parentHash, tokens: Int32Array.from(tokens) };
    return { hash, status: "registered" };
  }

  /** The counters: blocks free / cached / used, prefix-cache queries, hits, evictions and collisions. */
  stats(): BlockAllocatorStats {
    return {
      numBlocks: this.numBlocks,
      free: this.numFree,
      cached: this.numCached,
      used: this.numUsed,
      queries: this.#queries,
      hits: this.#hits,
      evictions: this.#evictions,
      collisions: this.#collisions,
    };
  }

  /**
   * Check the pool against every live table: each block's reference count equals the number of times the
   * tables list it, every unreferenced block is on exactly one of the free list and the evictor (the
   * evictor iff it holds cached contents), and the cache index matches the blocks' entries. Throws a message
   * naming the first block that breaks one.
   */
  checkTables(tables: readonly (readonly number[])[]): void {
    const n = this.numBlocks;
    const refs = new Int32Array(n);
    for (const t of tables) {
      for (const b of t) {
        this.#check("checkTables", b);
        refs[b]++;
      }
    }
    const onFree = new Uint8Array(n);
    for (const b of this.#free) {
      if (onFree[b]++) throw new Error(`BlockAllocator.checkTables: block ${b} is on the free list twice`);
    }
    for (let b = 0; b < n; b++) {
      const where = `BlockAllocator.checkTables: block ${b}`;
      if (this.#ref[b] !== refs[b]) {
        throw new Error(`${where} has reference count ${this.#ref[b]} but ${refs[b]} table references`);
      }
      const cached = this.#entry[b] !== undefined, inEvictor = this.#evictor.has(b);
      if (this.#ref[b] > 0 && (onFree[b] || inEvictor)) throw new Error(`${where} is in use and also free`);
      if (this.#ref[b] === 0 && onFree[b] + Number(inEvictor) !== 1) {
        throw new Error(
          `${where} has no reference but is on ${onFree[b] + Number(inEvictor)} free lists (lost)`,
        );
      }
      if (inEvictor && !cached) throw new Error(`${where} is in the evictor without cached contents`);
      if (onFree[b] && cached) throw new Error(`${where} is on the free list with cached contents`);
      if (cached && this.#cache.get(this.#entry[b]!.hash) !== b) {
        throw new Error(`${where} has cached contents missing from the cache index`);
      }
    }
    for (const [h, b] of this.#cache) {
      if (this.#entry[b]?.hash !== h) {
        throw new Error(`BlockAllocator.checkTables: cache index entry ${h} is stale`);
      }
    }
  }

  #walk(
    tokens: ArrayLike<number>,
    maxBlocks: number,
    hit: (block: number, hash: number) => void,
    count = false,
  ): void {
    if (!this.enablePrefixCaching) return;
    const bs = this.blockSize;
    const limit = Math.min(maxBlocks, Math.floor(tokens.length / bs));
    let parent = ROOT_HASH;
    for (let i = 0; i < limit; i++) {
      const chunk = Array.prototype.slice.call(tokens, i * bs, (i + 1) * bs) as number[];
      const h = this.#hash(parent, chunk);
      const b = this.#cache.get(h);
      if (b === undefined) return;
      if (!sameContents(this.#entry[b]!, parent, chunk)) {
        if (count) this.#collisions++;
        return;
      }
      hit(b, h);
      parent = h;
    }
  }

  #uncache(b: number): void {
    const e = this.#entry[b];
    if (e === undefined) return;
    this.#cache.delete(e.hash);
    this.#entry[b] = undefined;
  }

  #check(method: string, block: number): void {
    if (!Number.isInteger(block) || block < 0 || block >= this.numBlocks) {
      throw new Error(`BlockAllocator.${method}: block ${block} is out of range [0, ${this.numBlocks})`);
    }
  }
}

function sameContents(e: CacheEntry, parent: number, tokens: ArrayLike<number>): boolean {
  if (e.parent !== parent || e.tokens.length !== tokens.length) return false;
  for (let i = 0; i < tokens.length; i++) if (e.tokens[i] !== (tokens[i] | 0)) return false;
  return true;
}
