/**
 * Attention options, their validation, and the mask semantics every implementation shares: the reference
 * evaluates {@link visible} per element, the shaders evaluate the same predicate in WGSL, and the tiled
 * kernels skip whole blocks using the table from {@link blockTable}.
 *
 * Positions are bottom-right aligned: query row i sits at key position `p = i + (S - T)`, so with T = S
 * it is plain `i`, and with T < S (a chunk of new queries after a cache) the last query sees the last key.
 * @module
 */

import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";

/** A block-sparse mask: which (query block, key block) tiles are computed. */
export interface BlockMask {
  /** 0/1 per (head or 1, ceil(T / blockSize[0]), ceil(S / blockSize[1])), row-major. */
  mask: ArrayLike<number> | Tensor;
  /** Mask shape [heads (H or 1), query blocks, key blocks]. */
  shape: readonly [number, number, number];
  /** Block size in queries and keys (one number for square blocks). */
  blockSize: number | readonly [number, number];
}

/** Options shared by {@link attentionRef}, `standardAttention`, `flashAttention` and `attention`. */
export interface AttentionOptions {
  /** Causal mask, bottom-right aligned: query i sees keys j <= i + (S - T). Default false. */
  causal?: boolean;
  /**
   * Key padding: a (B, S) tensor of 0/1 (1 = attend), or lengths per batch (a (B) integer tensor or a
   * number array): keys j >= length[b] are masked.
   */
  keyPadding?: Tensor | readonly number[];
  /** Score scale; default 1 / sqrt(D). */
  scale?: number;
  /** ALiBi slopes, one per query head (H): bias -slope * |p - j| (= -slope * (p - j) under causal). */
  alibi?: readonly number[] | Float32Array | Float64Array;
  /**
   * Sliding window: `w` lets position p see keys p - w ... p (w earlier keys and itself); `[left, right]`
   * sees p - left ... p + right. Combined with `causal` as usual (a key must pass both).
   */
  window?: number | readonly [number, number];
  /** With `window`: the first g positions are global: every query sees keys j < g, and queries at p < g see every key. */
  globalTokens?: number;
  /** Block-sparse mask; blocks that are 0 are skipped by the tiled kernels. */
  blockMask?: BlockMask;
  /** Flash only: query rows per workgroup (a multiple of 8 in [8, 256]; default chosen from the adapter). */
  blockQ?: number;
  /** Flash only: keys per block (a multiple of 4 in [4, 4096]; default chosen from the adapter). */
  blockK?: number;
  /**
   * Flash only: the shader version, "v1", "v2" or "v3" (see attention_wgsl.ts); "auto" (the default) is
   * "v3". v1 and v2 need f32 and D divisible by 4. Checked the same way on every backend.
   */
  version?: "auto" | "v1" | "v2" | "v3";
  /**
   * Memory layout of q, k, v and o: "bhtd" (the default) takes q (B, H, T, D), k and v (B, Hkv, S, D) and
   * returns o (B, H, T, D); "bthd" takes q (B, T, H, D), k and v (B, S, Hkv, D) and returns o (B, T, H, D),
   * the layout a (B, T, H D) projection reshapes to, so a model needs no head transposes (the gradients
   * come back in the same layout). The log-sum-exp is (B, H, T) in both.
   */
  layout?: Layout;
}

/** The memory layouts attention takes (see {@link AttentionOptions.layout}). */
export type Layout = "bhtd" | "bthd";

/** The validated layout of the options. */
export function layoutOf(op: string, opts: AttentionOptions): Layout {
  const l = opts.layout ?? "bhtd";
  if (l !== "bhtd" && l !== "bthd") {
    throw new Error(`${op}: layout must be "bhtd" or "bthd", got ${JSON.stringify(opts.layout)}`);
  }
  return l;
}

/** Strides of t's (B, heads, rows, D) axes in the given layout (element units). */
export function headStrides(t: Tensor, layout: Layout): [number, number, number, number] {
  const [a, b, c, d] = t.strides;
  return layout === "bthd" ? [a, c, b, d] : [a, b, c, d];
}

/**
 * A (B, heads, rows, D) view of a 4-D tensor given in `layout`: the same storage, no copy and nothing
 * recorded for autograd (the caller disposes it).
 */
export function headsView(t: Tensor, layout: Layout): Tensor {
  const [a, b, c, d] = t.shape;
  return t.view(layout === "bthd" ? [a, c, b, d] : [a, b, c, d], headStrides(t, layout), t.offset);
}

/**
 * Runs `fn`, an implementation for (B, H, T, D) operands, on "bthd" operands: transposed views in, o
 * transposed back to (B, T, H, D) (contiguous); differentiable through the views. For the paths without
 * a native "bthd" kernel (standard attention, decode).
 */
export function viaHeadsFirst<R extends { o: Tensor }>(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  fn: (q: Tensor, k: Tensor, v: Tensor) => R,
): R {
  const views = [q, k, v].map((x) => x.transpose(1, 2));
  try {
    const res = fn(views[0], views[1], views[2]);
    const ot = res.o.transpose(1, 2);
    const o = ot.contiguous();
    ot.dispose();
    res.o.dispose();
    return { ...res, o };
  } finally {
    for (const x of views) x.dispose();
  }
}

/** The shape of a (B, heads, rows, D) result in `layout`. */
export function layoutShape(layout: Layout, B: number, heads: number, rows: number, D: number): number[] {
  return layout === "bthd" ? [B, rows, heads, D] : [B, heads, rows, D];
}

/** How a query row relates to the keys, resolved from the options and the shapes. */
export interface Resolved {
  B: number;
  H: number;
  Hkv: number;
  /** Query heads per kv head. */
  G: number;
  T: number;
  S: number;
  D: number;
  scale: number;
  causal: boolean;
  /** Position offset S - T. */
  off: number;
  /** Window [left, right], or null. */
  window: [number, number] | null;
  globalTokens: number;
  /** Per-batch key lengths (lengths form of keyPadding), or null. */
  lengths: Int32Array | null;
  /** (B, S) 0/1 padding tensor, or null. */
  keep: Tensor | null;
  /** Host copy of a cpu keep tensor (for the reference), or null. */
  keepHost: Float64Array | null;
  /** ALiBi slopes (H), or null. */
  alibi: Float64Array | null;
  sparse: {
    mask: Uint8Array;
    heads: number;
    nbr: number;
    nbc: number;
    br: number;
    bc: number;
  } | null;
  /** Memory layout of q, k, v and o. */
  layout: Layout;
}

/** A large window half-width meaning "unbounded" that still fits in an i32 uniform. */
export const UNBOUNDED = 1 << 30;

function checkInt(op: string, what: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new Error(`${op}: ${what} must be an integer >= ${min}, got ${v}`);
  }
}

/**
 * Validates q (B, H, T, D), k and v (B, Hkv, S, D) (or (B, T, H, D) and (B, S, Hkv, D) with layout "bthd")
 * and the options; throws naming the shapes. `needHost`
 * asks for host copies of mask tensors (the reference needs them; a webgpu mask then errors).
 */
export function resolve(
  op: string,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions,
  needHost: boolean,
): Resolved {
  const layout = layoutOf(op, opts);
  const bthd = layout === "bthd";
  for (const [n, t] of [["q", q], ["k", k], ["v", v]] as const) {
    t.check(op);
    if (t.rank !== 4) {
      throw new Error(
        `${op}: ${n} must be 4-D, ${
          bthd
            ? "(B, T, H, D) for q and (B, S, Hkv, D) for k and v (layout bthd)"
            : "(B, H, T, D) for q and (B, Hkv, S, D) for k and v"
        }; got ${n} ${fmt(t.shape)}`,
      );
    }
  }
  if (q.device !== k.device || q.device !== v.device) {
    throw new Error(
      `${op}: q, k, v are on different devices: ${q.describe()}, ${k.describe()}, ${v.describe()}`,
    );
  }
  if (q.dtype !== k.dtype || q.dtype !== v.dtype) {
    throw new Error(`${op}: q, k, v dtypes differ: ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  }
  if (!["f32", "f16", "f64"].includes(q.dtype)) throw new Error(`${op}: needs float tensors, got ${q.dtype}`);
  // (B, heads, rows, D) in either layout
  const dims = (t: Tensor) => bthd ? [t.shape[0], t.shape[2], t.shape[1], t.shape[3]] : [...t.shape];
  const [B, H, T, D] = dims(q);
  const [Bk, Hkv, S, Dk] = dims(k);
  const vd = dims(v);
  const shapes = `q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)}${bthd ? " (layout bthd)" : ""}`;
  if (Dk !== D || vd[3] !== D) throw new Error(`${op}: head dims differ: ${shapes}`);
  if (Bk !== B || vd[0] !== B) throw new Error(`${op}: batch sizes differ: ${shapes}`);
  if (vd[1] !== Hkv || vd[2] !== S) throw new Error(`${op}: k and v shapes differ: ${shapes}`);
  if (Hkv === 0 || H % Hkv !== 0) {
    throw new Error(`${op}: kv heads (${Hkv}) must divide query heads (${H}): ${shapes}`);
  }
  if (D === 0) throw new Error(`${op}: head dim is 0: ${shapes}`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  if (!Number.isFinite(scale)) throw new Error(`${op}: scale must be finite, got ${opts.scale}`);
  const r: Resolved = {
    B,
    H,
    Hkv,
    G: H / Hkv,
    T,
    S,
    D,
    scale,
    causal: !!opts.causal,
    off: S - T,
    window: null,
    globalTokens: 0,
    lengths: null,
    keep: null,
    keepHost: null,
    alibi: null,
    sparse: null,
    layout,
  };
  if (opts.window !== undefined) {
    const w = typeof opts.window === "number" ? [opts.window, 0] : [...opts.window];
    if (w.length !== 2) {
      throw new Error(`${op}: window must be a number or [left, right], got ${opts.window}`);
    }
    checkInt(op, "window left", w[0], 0);
    checkInt(op, "window right", w[1], 0);
    r.window = [Math.min(w[0], UNBOUNDED), Math.min(w[1], UNBOUNDED)];
  }
  if (opts.globalTokens !== undefined) {
    checkInt(op, "globalTokens", opts.globalTokens, 0);
    if (!r.window && opts.globalTokens > 0) {
      throw new Error(`${op}: globalTokens needs a window (without one every token already sees every key)`);
    }
    r.globalTokens = Math.min(opts.globalTokens, UNBOUNDED);
  }
  const kp = opts.keyPadding;
  if (kp !== undefined) {
    if (Array.isArray(kp) || ArrayBuffer.isView(kp)) {
      const a = kp as readonly number[];
      if (a.length !== B) {
        throw new Error(`${op}: keyPadding lengths must have B = ${B} entries, got ${a.length}`);
      }
      r.lengths = Int32Array.from(a, (x) => {
        checkInt(op, "keyPadding length", x, 0);
        return Math.min(x, S);
      });
    } else {
      const t = kp as Tensor;
      t.check(op);
      if (t.rank === 1 && t.shape[0] === B && !t.dtype.startsWith("f")) {
        if (t.device !== "cpu") {
          throw new Error(
            `${op}: keyPadding lengths must be on the cpu (they set loop bounds); got ${t.describe()}`,
          );
        }
        const c = t.contiguous();
        r.lengths = Int32Array.from(c.storage.data!.subarray(c.offset, c.offset + B), (x) => {
          checkInt(op, "keyPadding length", x, 0);
          return Math.min(x, S);
        });
        c.dispose();
      } else if (t.rank === 2 && t.shape[0] === B && t.shape[1] === S) {
        if (t.device !== q.device) {
          throw new Error(`${op}: keyPadding mask is on ${t.device} but q is on ${q.device}`);
        }
        r.keep = t;
        if (needHost) {
          if (t.device !== "cpu") throw new Error(`${op}: needs a cpu keyPadding mask, got ${t.describe()}`);
          const c = t.contiguous();
          r.keepHost = Float64Array.from(c.storage.data!.subarray(c.offset, c.offset + B * S));
          c.dispose();
        }
      } else {
        throw new Error(
          `${op}: keyPadding must be a (B, S) = [${B}, ${S}] 0/1 mask or (B) = [${B}] integer lengths; got ${t.describe()}`,
        );
      }
    }
  }
  if (opts.alibi !== undefined) {
    if (opts.alibi.length !== H) {
      throw new Error(`${op}: alibi needs one slope per query head (H = ${H}), got ${opts.alibi.length}`);
    }
    r.alibi = Float64Array.from(opts.alibi);
    if (r.alibi.some((x) => !Number.isFinite(x))) throw new Error(`${op}: alibi slopes must be finite`);
  }
  if (opts.blockMask) r.sparse = resolveSparse(op, opts.blockMask, H, T, S);
  return r;
}

function resolveSparse(op: string, bm: BlockMask, H: number, T: number, S: number): Resolved["sparse"] {
  const [br, bc] = typeof bm.blockSize === "number" ? [bm.blockSize, bm.blockSize] : bm.blockSize;
  checkInt(op, "blockMask block size", br, 1);
  checkInt(op, "blockMask block size", bc, 1);
  const nbr = Math.ceil(T / br), nbc = Math.ceil(S / bc);
  const [hs, r, c] = bm.shape;
  if (bm.shape.length !== 3 || (hs !== 1 && hs !== H) || r !== nbr || c !== nbc) {
    throw new Error(
      `${op}: blockMask must have shape [H or 1, ceil(T / ${br}), ceil(S / ${bc})] = [${H} or 1, ${nbr}, ${nbc}], got ${
        fmt(bm.shape)
      }`,
    );
  }
  let data: ArrayLike<number>;
  const m = bm.mask as Tensor;
  if (typeof m.check === "function") {
    if (m.device !== "cpu") {
      throw new Error(
        `${op}: blockMask must be on the cpu (it decides which blocks run); got ${m.describe()}`,
      );
    }
    if (m.size !== hs * r * c) {
      throw new Error(`${op}: blockMask tensor ${fmt(m.shape)} does not match shape ${fmt(bm.shape)}`);
    }
    const cm = m.contiguous();
    data = cm.storage.data!.slice(cm.offset, cm.offset + m.size);
    cm.dispose();
  } else data = bm.mask as ArrayLike<number>;
  if (data.length !== hs * r * c) {
    throw new Error(
      `${op}: blockMask has ${data.length} entries; shape ${fmt(bm.shape)} needs ${hs * r * c}`,
    );
  }
  return {
    mask: Uint8Array.from(data as ArrayLike<number>, (x) => (x ? 1 : 0)),
    heads: hs,
    nbr,
    nbc,
    br,
    bc,
  };
}

/** Whether query row i of head h (batch b) sees key j: the predicate the shaders implement too. */
export function visible(r: Resolved, b: number, h: number, i: number, j: number): boolean {
  if (r.lengths && j >= r.lengths[b]) return false;
  if (r.keepHost && !r.keepHost[b * r.S + j]) return false;
  const p = i + r.off;
  if (r.causal && j > p) return false;
  if (r.window) {
    const inWin = j >= p - r.window[0] && j <= p + r.window[1];
    if (!inWin && !(j < r.globalTokens || p < r.globalTokens)) return false;
  }
  if (r.sparse) {
    const s = r.sparse;
    const hm = s.heads === 1 ? 0 : h;
    if (!s.mask[(hm * s.nbr + Math.floor(i / s.br)) * s.nbc + Math.floor(j / s.bc)]) return false;
  }
  return true;
}

/** The ALiBi bias of (h, i, j). */
export function bias(r: Resolved, h: number, i: number, j: number): number {
  return r.alibi ? -r.alibi[h] * Math.abs(i + r.off - j) : 0;
}

/** Block states in {@link blockTable}. */
export const SKIP = 0, PARTIAL = 1, FULL = 2;

/**
 * The state of every (head, query block, key block) tile for blocks of `br` queries and `bc` keys:
 * SKIP (nothing visible), FULL (everything visible, no per-element mask) or PARTIAL. Heads are H for a
 * per-head block mask, else 1. Key lengths are left to the kernel (they vary per batch); a (B, S) padding
 * mask makes every visible tile PARTIAL. Conservative: a tile is SKIP only when provably empty.
 */
export function blockTable(
  r: Resolved,
  br: number,
  bc: number,
): { table: Uint32Array; heads: number; nqb: number; nkb: number } {
  const nqb = Math.max(1, Math.ceil(r.T / br)), nkb = Math.max(1, Math.ceil(r.S / bc));
  const heads = r.sparse && r.sparse.heads > 1 ? r.H : 1;
  const table = new Uint32Array(heads * nqb * nkb);
  const g = r.globalTokens;
  for (let h = 0; h < heads; h++) {
    for (let qb = 0; qb < nqb; qb++) {
      const i0 = qb * br, i1 = Math.min(r.T, i0 + br) - 1; // inclusive rows
      const p0 = i0 + r.off, p1 = i1 + r.off;
      for (let kb = 0; kb < nkb; kb++) {
        const j0 = kb * bc, j1 = Math.min(r.S, j0 + bc) - 1;
        let none = false, all = true;
        if (r.causal) {
          if (j0 > p1) none = true;
          if (j1 > p0) all = false;
        }
        if (r.window) {
          const [L, R] = r.window;
          const anyGlobal = j0 < g || p0 < g;
          const allGlobal = j1 < g || p1 < g;
          if ((j0 > p1 + R || j1 < p0 - L) && !anyGlobal) none = true;
          if (!(j0 >= p1 - L && j1 <= p0 + R) && !allGlobal) all = false;
        }
        if (r.sparse) {
          const s = r.sparse, hm = s.heads === 1 ? 0 : h;
          let ones = 0, n = 0;
          for (let a = Math.floor(i0 / s.br); a <= Math.floor(i1 / s.br); a++) {
            for (let c = Math.floor(j0 / s.bc); c <= Math.floor(j1 / s.bc); c++) {
              ones += s.mask[(hm * s.nbr + a) * s.nbc + c];
              n++;
            }
          }
          if (ones === 0) none = true;
          if (ones < n) all = false;
        }
        if (r.keep) all = false;
        if (r.T === 0 || r.S === 0) none = true;
        table[(h * nqb + qb) * nkb + kb] = none ? SKIP : all ? FULL : PARTIAL;
      }
    }
  }
  return { table, heads, nqb, nkb };
}

/**
 * Query-key pairs a tiled kernel visits (tiles not SKIP, clipped to T x S and to each batch's key length),
 * summed over batches and heads, and the visited tiles. Used for the FLOP and IO model.
 */
export function visitedWork(
  r: Resolved,
  t: ReturnType<typeof blockTable>,
  br: number,
  bc: number,
): { pairs: number; tiles: number; rowTiles: number } {
  let pairs = 0, tiles = 0;
  const rowsSeen = new Set<number>();
  for (let b = 0; b < r.B; b++) {
    const len = r.lengths ? r.lengths[b] : r.S;
    for (let h = 0; h < r.H; h++) {
      const hm = t.heads === 1 ? 0 : h;
      for (let qb = 0; qb < t.nqb; qb++) {
        const rows = Math.min(r.T, (qb + 1) * br) - qb * br;
        for (let kb = 0; kb < t.nkb; kb++) {
          const j0 = kb * bc;
          if (j0 >= len || t.table[(hm * t.nqb + qb) * t.nkb + kb] === SKIP) continue;
          pairs += rows * (Math.min(len, j0 + bc) - j0);
          tiles++;
          rowsSeen.add(qb);
        }
      }
    }
  }
  return { pairs, tiles, rowTiles: rowsSeen.size };
}

/** Bytes moved to and from device memory and the FLOPs of one attention call or backward pass. */
export interface AttentionStats {
  /** Which implementation ran: "reference", "standard", "flash v3", "decode v1"... */
  impl: string;
  /** Block sizes of a tiled kernel (query rows, keys), or null. */
  block: [number, number] | null;
  /** Floating-point operations (multiply-add = 2) of the programs. */
  flops: number;
  /** Bytes the programs read from device memory, from their loop structure. */
  bytesRead: number;
  /** Bytes the programs wrote to device memory. */
  bytesWritten: number;
  /** Tiles a tiled kernel visited (0 for the others). */
  tilesVisited: number;
  /** Tiles a tiled kernel skipped without touching (causal, window, sparse); 0 for the others. */
  tilesSkipped: number;
  /** Per program: name, bytes read, bytes written, FLOPs. */
  programs: { name: string; read: number; written: number; flops: number }[];
  /** Filled in when the backward pass runs (gradients recorded). */
  backward?: AttentionStats;
}

/** Builds a stats object from per-program entries. */
export function makeStats(
  impl: string,
  block: [number, number] | null,
  programs: AttentionStats["programs"],
  tiles: { visited: number; skipped: number } = { visited: 0, skipped: 0 },
): AttentionStats {
  let flops = 0, read = 0, written = 0;
  for (const p of programs) {
    flops += p.flops;
    read += p.read;
    written += p.written;
  }
  return {
    impl,
    block,
    flops,
    bytesRead: read,
    bytesWritten: written,
    tilesVisited: tiles.visited,
    tilesSkipped: tiles.skipped,
    programs,
  };
}
