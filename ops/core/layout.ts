/**
 * Layout ops: concat, stack, gather (indexSelect / embedding lookup).
 * @module
 */

import { isFloat, promote } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, normAxis, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { cast, contiguous } from "./elementwise.ts";
import { copyIntoRef, gatherRef, scatterAddRef } from "./layout_ref.ts";
import {
  copyIntoSource,
  gatherSource,
  indexOobCode,
  LAYOUT_WG,
  scatterAddSource,
  scatterSortSource,
  scatterSumSource,
  SORT_WG,
} from "./layout_wgsl.ts";
import { record } from "../../runtime/autograd.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { disposeOnThrow, empty, sameDevice, Uniforms } from "./util.ts";

/** The gradient of each concat input is its slice of g (cast back to its own dtype). */
function recordConcat(tensors: readonly Tensor[], a: number, out: Tensor): Tensor {
  if (!isFloat(out.dtype)) return out;
  const sizes = tensors.map((t) => t.shape[a]), dtypes = tensors.map((t) => t.dtype);
  return record("concat", out, tensors, [], (g) => {
    let start = 0;
    return sizes.map((n, k) => {
      const spec = g.shape.map((_, d) => (d === a ? [start, start + n] as [number, number] : null));
      start += n;
      const part = contiguous(g.slice(spec));
      return isFloat(dtypes[k]) && dtypes[k] !== g.dtype ? cast(part, dtypes[k]) : part;
    });
  });
}

/** Registers the message for `op`'s index-out-of-range diagnostic (raised by its shaders). */
function indexDiagnostic(op: "gather" | "scatterAdd", idx: Tensor): void {
  // the shader stores the index word: an i32 index reads back signed (-5), a u32 one unsigned (4000000000)
  gpu().diagnostic(
    indexOobCode(op, idx.dtype),
    (v, limit) => `${op}: index ${v} is out of range for an axis of size ${limit}`,
    idx.dtype === "i32",
  );
}

/**
 * One dispatch of an index-driven kernel (gather, scatterAdd): one invocation per output element, with the
 * shared diagnostics buffer bound for an index out of range, reported under `op`'s name at the next readback.
 */
function runIndexed(
  op: "gather" | "scatterAdd",
  key: string,
  source: () => string,
  src: Tensor,
  idx: Tensor,
  out: Tensor,
  words: number[],
  threads = out.size,
): void {
  const ctx = gpu();
  indexDiagnostic(op, idx);
  ctx.run({
    name: op,
    key,
    source,
    inputs: [src.storage.buffer!, idx.storage.buffer!],
    outputs: [out.storage.buffer!, ctx.diagnostics],
    uniforms: new Uniforms().u32(...words).build(),
    workgroups: grid(threads, LAYOUT_WG),
  });
}

/**
 * Joins tensors along an existing `axis` (default 0). All other dims must match; dtypes promote.
 *
 * @example
 * ```ts
 * import { concat, tensor } from "seqlab";
 * console.log(concat([tensor([[1, 2]]), tensor([[3, 4], [5, 6]])], 0).shape); // [3, 2]
 * ```
 */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw new Error("concat: needs a non-empty array of tensors");
  }
  const device = sameDevice("concat", ...tensors);
  const first: Tensor = tensors[0];
  if (first.rank === 0) throw new Error("concat: cannot concatenate scalars; use stack");
  const a = normAxis("concat", axis, first.rank);
  for (const t of tensors) {
    if (t.rank !== first.rank || t.shape.some((d: number, i: number) => i !== a && d !== first.shape[i])) {
      throw new Error(
        `concat: shapes must match except on axis ${a}: ${tensors.map((x) => fmt(x.shape)).join(", ")}`,
      );
    }
  }
  const dtype = tensors.map((t) => t.dtype).reduce(promote);
  const total = tensors.reduce((s, t) => s + t.shape[a], 0);
  const outShape = first.shape.map((d, i) => (i === a ? total : d));
  const out = recordConcat(tensors, a, empty("concat", outShape, dtype, device));
  if (out.size === 0) return out;
  const outer = numel(first.shape.slice(0, a)), inner = numel(first.shape.slice(a + 1));
  return disposeOnThrow([out], () => {
    let colOff = 0;
    for (const t of tensors) {
      const cols = t.shape[a] * inner;
      if (cols > 0) {
        const c0 = t.dtype === dtype ? t : cast(t, dtype);
        let src: Tensor;
        try {
          src = contiguous(c0);
        } finally {
          if (c0 !== t) c0.dispose();
        }
        try {
          if (device === "cpu") {
            copyIntoRef(src.storage.data!, src.offset, outer, cols, out.storage.data!, total * inner, colOff);
          } else {
            gpu().run({
              name: "concat",
              key: dtype,
              source: () => copyIntoSource(dtype),
              inputs: [src.storage.buffer!],
              outputs: [out.storage.buffer!],
              uniforms: new Uniforms().u32(outer, cols, total * inner, colOff, src.offset).build(),
              workgroups: grid(outer * cols, LAYOUT_WG),
            });
          }
        } finally {
          src.dispose();
        }
      }
      colOff += cols;
    }
    return out;
  });
}

/**
 * Joins equally shaped tensors along a new `axis` (default 0).
 *
 * @example
 * ```ts
 * import { stack, tensor } from "seqlab";
 * console.log(stack([tensor([1, 2]), tensor([3, 4])], 1).shape); // [2, 2]
 * ```
 */
export function stack(tensors: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw new Error("stack: needs a non-empty array of tensors");
  }
  const shape: readonly number[] = tensors[0].check("stack").shape;
  for (const t of tensors) {
    if (t.check("stack").rank !== shape.length || t.shape.some((d: number, i: number) => d !== shape[i])) {
      throw new Error(
        `stack: all tensors must have one shape: ${tensors.map((x) => fmt(x.shape)).join(", ")}`,
      );
    }
  }
  const a = normAxis("stack", axis, shape.length + 1);
  const views = tensors.map((t) => t.unsqueeze(a));
  try {
    return concat(views, a);
  } finally {
    views.forEach((v) => v.dispose());
  }
}

/**
 * Selects entries of `x` along `axis` (default 0) by integer `indices` (i32 or u32, any shape): the
 * result has shape x.shape[:axis] + indices.shape + x.shape[axis+1:]. With axis 0 this is an embedding
 * lookup. An index outside [0, size) is an error (on webgpu, reported at the next readback).
 *
 * @example
 * ```ts
 * import { gather, tensor } from "seqlab";
 * const table = tensor([[0, 0], [1, 1], [2, 2]]);
 * console.log(await gather(table, tensor([2, 0], { dtype: "i32" })).toArray()); // [2, 2, 0, 0]
 * ```
 */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  const device = sameDevice("gather", x, indices);
  if (isFloat(indices.dtype)) {
    throw new Error(`gather: indices must be i32 or u32, got ${indices.describe()}`);
  }
  if (x.rank === 0) throw new Error(`gather: cannot index a scalar ${x.describe()}`);
  const a = normAxis("gather", axis, x.rank);
  const outShape = [...x.shape.slice(0, a), ...indices.shape, ...x.shape.slice(a + 1)];
  const outer = numel(x.shape.slice(0, a)), A = x.shape[a], inner = numel(x.shape.slice(a + 1));
  const I = indices.size;
  const A0 = x.shape[a];
  const out = isFloat(x.dtype)
    ? record("gather", empty("gather", outShape, x.dtype, device), [x, indices], [indices], (g, [idx]) => [
      scatterAdd(g, idx, A0, a),
      null,
    ])
    : empty("gather", outShape, x.dtype, device);
  if (out.size === 0 && I === 0) return out;
  let src: Tensor | null = null, idx: Tensor | null = null;
  try {
    src = contiguous(x);
    idx = contiguous(indices);
    if (device === "cpu") {
      gatherRef(
        src.storage.data!,
        src.offset,
        outer,
        A,
        inner,
        idx.storage.data!,
        idx.offset,
        I,
        out.storage.data!,
        "gather",
      );
      return out;
    }
    if (out.size === 0) return out;
    // v2: vec4 rows when the f32 row width and offset allow (see layout_wgsl.ts)
    const vec4 = x.dtype === "f32" && inner % 4 === 0 && src.offset % 4 === 0;
    const w = vec4 ? 4 : 1;
    runIndexed(
      "gather",
      `${x.dtype}|${indices.dtype}|${vec4}`,
      () => gatherSource(x.dtype, indices.dtype, vec4),
      src,
      idx,
      out,
      [outer, A, inner / w, I, src.offset / w, idx.offset],
      out.size / w,
    );
    return out;
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    src?.dispose();
    idx?.dispose();
  }
}

/**
 * The adjoint of {@link gather}: a tensor whose `axis` has `size` entries, entry k holding the sum of the
 * slices of `src` whose index is k. `src` has shape lead + indices.shape + trail; the result lead + [size] +
 * trail. Deterministic: every run adds a row's slices in the same order (no float atomics). Used for
 * embedding gradients. `version` picks the WebGPU shader (see layout_wgsl.ts): "v1" loops over every
 * index for every output element, "v2" sorts the indices by row first; "auto" is v2 unless the table or
 * the index count is past what v2's one-workgroup sort handles ({@link scatterAddV2Fits}).
 *
 * @example
 * ```ts
 * import { scatterAdd, tensor } from "seqlab";
 * const src = tensor([[1, 1], [2, 2], [3, 3]]);
 * console.log(await scatterAdd(src, tensor([2, 0, 2], { dtype: "i32" }), 3).toArray()); // [2, 2, 0, 0, 4, 4]
 * ```
 */
export function scatterAdd(
  src: Tensor,
  indices: Tensor,
  size: number,
  axis = 0,
  o: { version?: ScatterAddVersion } = {},
): Tensor {
  const device = sameDevice("scatterAdd", src, indices);
  const version = o.version ?? "auto";
  if (!SCATTER_VERSIONS.includes(version)) {
    throw new Error(
      `scatterAdd: version must be one of ${SCATTER_VERSIONS.join(", ")}, got ${JSON.stringify(version)}`,
    );
  }
  if (isFloat(indices.dtype)) {
    throw new Error(`scatterAdd: indices must be i32 or u32, got ${indices.describe()}`);
  }
  if (!isFloat(src.dtype)) throw new Error(`scatterAdd: src must be a float tensor, got ${src.describe()}`);
  if (!Number.isInteger(size) || size < 0) {
    throw new Error(`scatterAdd: size must be an integer >= 0, got ${size}`);
  }
  const ir = indices.rank;
  const a = normAxis("scatterAdd", axis, src.rank - ir + 1);
  const mid = src.shape.slice(a, a + ir);
  if (mid.length !== ir || mid.some((d, i) => d !== indices.shape[i])) {
    throw new Error(
      `scatterAdd: src ${fmt(src.shape)} must hold indices ${fmt(indices.shape)} at axis ${a}`,
    );
  }
  const outShape = [...src.shape.slice(0, a), size, ...src.shape.slice(a + ir)];
  const outer = numel(src.shape.slice(0, a)), inner = numel(src.shape.slice(a + ir)), I = indices.size;
  const v2 = version !== "v1" && scatterAddV2Fits(size, I);
  if (version === "v2" && !v2) {
    throw new Error(
      `scatterAdd v2: ${I} indices into ${size} rows are past its one-workgroup sort ` +
        `(3 * size + indices <= ${V2_SORT_ROWS}); use v1`,
    );
  }
  const out = record("scatterAdd", empty("scatterAdd", outShape, src.dtype, device), [src, indices], [
    indices,
  ], (
    g,
    [idx],
  ) => [gather(g, idx, a), null]);
  if (out.size === 0) return out;
  let s: Tensor | null = null, idx: Tensor | null = null;
  try {
    s = contiguous(src);
    idx = contiguous(indices);
    if (device === "cpu") {
      scatterAddRef(
        s.storage.data!,
        s.offset,
        outer,
        I,
        inner,
        idx.storage.data!,
        idx.offset,
        size,
        out.storage.data!,
        "scatterAdd",
      );
      return out;
    }
    if (v2) {
      scatterAddV2(s, idx, out, outer, size, inner, I);
      return out;
    }
    // each invocation loops over the indices: at most MAX_LOOP of them per dispatch (lavapipe's loop cap)
    for (let j0 = 0; j0 < Math.max(I, 1); j0 += MAX_LOOP) {
      const words = [outer, size, inner, I, s.offset, idx.offset, j0, Math.min(I, j0 + MAX_LOOP)];
      const source = () => scatterAddSource(src.dtype, indices.dtype);
      runIndexed("scatterAdd", `${src.dtype}|${indices.dtype}`, source, s, idx, out, words);
    }
    return out;
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    s?.dispose();
    idx?.dispose();
  }
}

/** Shader versions of scatterAdd on WebGPU (see layout_wgsl.ts). */
export type ScatterAddVersion = "auto" | "v1" | "v2";

const SCATTER_VERSIONS: readonly ScatterAddVersion[] = ["auto", "v1", "v2"];

/**
 * The sort's counting and scan loop over rows and indices in one workgroup of SORT_WG lanes: 3 passes over
 * the rows and one over the indices, all within half of MAX_LOOP so the first placing step has room.
 */
const V2_SORT_ROWS = (SORT_WG * MAX_LOOP) / 2 - 4 * SORT_WG;

/**
 * Whether scatterAdd v2 takes `indices` indices into `rows` rows: its one-workgroup sort counts and scans
 * within one dispatch (3 * rows + indices <= 1,048,320, e.g. a 300k-row table with 100k tokens).
 *
 * @example
 * ```ts
 * import { scatterAddV2Fits } from "./layout.ts";
 * console.log(scatterAddV2Fits(50257, 8192), scatterAddV2Fits(400000, 0)); // true false
 * ```
 */
export function scatterAddV2Fits(rows: number, indices: number): boolean {
  return 3 * rows + indices <= V2_SORT_ROWS;
}

/**
 * scatterAdd v2 on contiguous src (outer, I, inner) and idx (I) into out (outer, A, inner): the sort
 * (placing at most MAX_LOOP indices per dispatch after the counting in the first), then the row sums
 * over windows of MAX_LOOP sorted positions.
 */
function scatterAddV2(
  s: Tensor,
  idx: Tensor,
  out: Tensor,
  outer: number,
  A: number,
  inner: number,
  I: number,
): void {
  const ctx = gpu();
  const temps = [
    empty("scatterAdd", [Math.max(A, 1)], "u32", "webgpu"), // per row: count, then next free slot
    empty("scatterAdd", [A + 1], "u32", "webgpu"), // per row: first slot in order
    empty("scatterAdd", [Math.max(I, 1)], "u32", "webgpu"), // the indices' positions j, sorted by row
  ];
  try {
    const [cnt, start, order] = temps.map((t) => t.storage.buffer!);
    indexDiagnostic("scatterAdd", idx);
    // the first dispatch also loops over the rows (3 times) and the indices once, in blocks of SORT_WG
    const prep = 3 * Math.ceil(A / SORT_WG) + Math.ceil(I / SORT_WG) + 2 * SORT_WG;
    for (let j0 = 0, first = true; first || j0 < I; first = false) {
      const j1 = Math.min(I, j0 + (Math.floor((MAX_LOOP - (first ? prep : 0)) / SORT_WG) - 1) * SORT_WG);
      ctx.run({
        name: "scatterAdd",
        key: `sort|${idx.dtype}`,
        source: () => scatterSortSource(idx.dtype),
        inputs: [idx.storage.buffer!],
        outputs: [cnt, start, order, ctx.diagnostics],
        uniforms: new Uniforms().u32(A, I, idx.offset, j0, j1, first ? 1 : 0).build(),
        workgroups: [1, 1, 1],
      });
      j0 = j1;
    }
    const vec4 = s.dtype === "f32" && inner % 4 === 0 && s.offset % 4 === 0;
    const w = vec4 ? 4 : 1;
    for (let p0 = 0; p0 < Math.max(I, 1); p0 += MAX_LOOP) {
      ctx.run({
        name: "scatterAdd",
        key: `sum|${s.dtype}|${vec4}`,
        source: () => scatterSumSource(s.dtype, vec4),
        inputs: [s.storage.buffer!, start, order],
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(outer, A, inner / w, I, s.offset / w, p0, p0 + MAX_LOOP).f32(1).build(),
        workgroups: grid((outer * A * inner) / w, LAYOUT_WG),
      });
    }
  } finally {
    for (const t of temps) t.dispose();
  }
}

registerOps({ gather });
