/**
 * Elementwise ops: unary math, binary arithmetic and comparisons with NumPy broadcasting, `where`, casts
 * and contiguous copies. Same signature on both backends; the cpu path is the float64 reference.
 * @module
 */

import { checkDType, type DType, isFloat, promote } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { broadcastShapes, contiguousStrides, fmt } from "../../runtime/shape.ts";
import { type Operand, Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import {
  actBackwardRef,
  binaryRef,
  intBinaryRef,
  mapRef,
  toDType,
  unaryGradRef,
  unaryRef,
} from "./elementwise_ref.ts";
import {
  ACTIVATIONS,
  binaryWgsl,
  elementwiseSource,
  elementwiseTileSource,
  elementwiseVec4Source,
  EW_WG,
  EW_WORDS,
  ewOptions,
  MAX_RANK,
  unaryGradFrom,
  unaryGradWgsl,
  unaryWgsl,
  type V3Kind,
  type V4Kind,
} from "./elementwise_wgsl.ts";
import { coalesce, computeType, disposeOnThrow, empty, operand, sameDevice, Uniforms } from "./util.ts";
import { record } from "../../runtime/autograd.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { sumTo } from "./reduce.ts";

/**
 * Runs an elementwise kernel over inputs already broadcast to one shape. `computeTypes[k]` is the WGSL type
 * input k is converted to before `expr`. With `dst` (a view of the same shape), writes into its storage
 * positions instead of a new contiguous tensor.
 */
function mapOp(
  op: string,
  inputs: Tensor[],
  outDtype: DType,
  ref: (...x: number[]) => number,
  expr: string,
  computeTypes: string[],
  dst?: Tensor,
): Tensor {
  const shape = inputs[0].shape;
  if (inputs[0].device === "cpu") {
    const out = dst ?? empty(op, shape, outDtype, "cpu");
    if (out.size > 0) mapRef(inputs, out, ref);
    return out;
  }
  // checked before the output is allocated: an op that throws leaves nothing allocated
  const lists = [contiguousStrides(shape), ...inputs.map((t) => t.strides), ...(dst ? [dst.strides] : [])];
  const c = coalesce(shape, lists);
  if (c.shape.length > MAX_RANK) {
    throw new Error(
      `${op}: ${fmt(shape)} needs ${c.shape.length} strided dims; at most ${MAX_RANK} are supported`,
    );
  }
  const out = dst ?? empty(op, shape, outDtype, "webgpu");
  if (out.size === 0) return out;
  const v4 = ewOptions.vec4 && ewOptions.tiles ? tilePlan(c, inputs.map((t) => t.offset), dst) : null;
  const v3 = ewOptions.vec4 ? vec4Plan(c, inputs.map((t) => t.offset), dst) : null;
  const flat = c.strides[0];
  const contig = inputs.map((_, k) => c.strides[k + 1].every((s, d) => s === flat[d]));
  const outStrided = !!dst && !c.strides[inputs.length + 1].every((s, d) => s === flat[d]);
  const u = new Uniforms().u32(out.size, c.shape.length, ...inputs.map((t) => t.offset)).padTo(5);
  u.u32(dst ? dst.offset : 0).padTo(8);
  u.u32(...c.shape).padTo(16);
  inputs.forEach((_, k) => u.u32(...c.strides[k + 1]).padTo(24 + 8 * k));
  if (dst) u.padTo(40).u32(...c.strides[inputs.length + 1]);
  u.padTo(EW_WORDS);
  const dtypes = inputs.map((t) => t.dtype);
  return disposeOnThrow(dst ? [] : [out], () => {
    if (v4) {
      const words = u.build(), rank = c.shape.length;
      words[0] = out.size / 16; // v4: word 0 counts 4 x 4 tiles
      gpu().run({
        name: op,
        key: `v4|${expr}|${dtypes.join(",")}>${outDtype}|${v4.join("")}${dst ? "d" : ""}|${
          computeTypes.join(",")
        }|r${rank}`,
        source: () => elementwiseTileSource(dtypes, outDtype, expr, v4, computeTypes, rank, !!dst),
        inputs: inputs.map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!],
        uniforms: words,
        workgroups: grid(words[0], EW_WG),
      });
      return out;
    }
    if (v3) {
      const words = u.build();
      words[0] = Math.ceil(out.size / 4); // v3: word 0 counts vec4s, word 6 elements
      words[6] = out.size;
      const kinds = v3.kinds.join(""), rank = c.shape.length;
      gpu().run({
        name: op,
        key: `v3|${expr}|${dtypes.join(",")}>${outDtype}|${kinds}${v3.out}${v3.tail ? "t" : ""}|${
          computeTypes.join(",")
        }|r${rank}`,
        source: () =>
          elementwiseVec4Source(dtypes, outDtype, expr, v3.kinds, v3.out, computeTypes, v3.tail, rank),
        inputs: inputs.map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!],
        uniforms: words,
        workgroups: grid(words[0], EW_WG),
      });
      return out;
    }
    gpu().run({
      name: op,
      key: `${expr}|${dtypes.join(",")}>${outDtype}|${contig.map(Number).join("")}${outStrided ? "s" : ""}${
        dst ? "d" : ""
      }|${computeTypes.join(",")}|r${c.shape.length}`,
      source: () =>
        elementwiseSource(dtypes, outDtype, expr, contig, computeTypes, !!dst, outStrided, c.shape.length),
      inputs: inputs.map((t) => t.storage.buffer!),
      outputs: [out.storage.buffer!],
      uniforms: u.build(),
      workgroups: grid(out.size, EW_WG),
    });
    return out;
  });
}

/**
 * Whether v4 (4 x 4 tiles) serves an op over the coalesced layout `c`, and how it reads each input
 * ({@link V4Kind}): both inner dims multiples of 4, at least one input transposed (stride 1 down the
 * output's rows, a non-zero multiple of 4 along them), the others row-major (stride 1 along the rows), a
 * `dst` row-major; offsets and the strides of the other dims multiples of 4. Else v3 serves.
 */
function tilePlan(
  c: { shape: number[]; strides: number[][] },
  offsets: number[],
  dst?: Tensor,
): V4Kind[] | null {
  const rank = c.shape.length;
  if (rank < 2 || c.shape[rank - 1] % 4 !== 0 || c.shape[rank - 2] % 4 !== 0) return null;
  const aligned = (s: number[], off: number, unit: number) =>
    off % 4 === 0 && s.every((x, d) => d === unit || x % 4 === 0);
  const kind = (s: number[], off: number): V4Kind | null => {
    if (s[rank - 2] === 1 && s[rank - 1] !== 0 && aligned(s, off, rank - 2)) return "t";
    if (s[rank - 1] === 1 && aligned(s, off, rank - 1)) return "w";
    return null;
  };
  const kinds = offsets.map((off, k) => kind(c.strides[k + 1], off));
  if (!kinds.includes("t") || kinds.includes(null)) return null;
  if (dst && kind(c.strides[c.strides.length - 1], dst.offset) !== "w") return null;
  return kinds as V4Kind[];
}

/**
 * Whether v3 (vec4) serves an op over the coalesced layout `c` (strides: the output's flat ones, then
 * each input's, then `dst`'s), and how it loads each input ({@link V3Kind}). Null when the output cannot
 * be stored as whole aligned vec4s: a single element, an innermost dim not a multiple of 4 unless the op is
 * flat (rank 1: the last partial vec4 is stored lane by lane), or a `dst` whose innermost stride is not 1.
 */
function vec4Plan(
  c: { shape: number[]; strides: number[][] },
  offsets: number[],
  dst?: Tensor,
): { kinds: V3Kind[]; out: "c" | "v"; tail: boolean } | null {
  const rank = c.shape.length;
  if (rank === 0) return null;
  const inner = c.shape[rank - 1];
  const aligned = inner % 4 === 0;
  if (!aligned && rank > 1) return null;
  const flat = c.strides[0];
  const same = (s: number[]) => s.every((x, d) => x === flat[d]);
  // the innermost stride 1, and the offset and every outer stride multiples of 4: a run of 4 is one vec4
  const vecRun = (s: number[], off: number) =>
    aligned && s[rank - 1] === 1 && off % 4 === 0 && s.every((x, d) => d === rank - 1 || x % 4 === 0);
  let out: "c" | "v" = "c";
  if (dst) {
    const s = c.strides[c.strides.length - 1];
    if (same(s) && dst.offset % 4 === 0) out = "c";
    else if (vecRun(s, dst.offset)) out = "v";
    else return null;
  }
  const kinds = offsets.map((off, k): V3Kind => {
    const s = c.strides[k + 1];
    if (same(s) && off % 4 === 0) return "c";
    if (s.every((x) => x === 0)) return "k";
    if (vecRun(s, off) && s.every((x, d) => d === rank - 1 || x === 0)) return "r";
    if (rank === 2 && s[0] === 1 && s[1] === 0) return "q";
    if (vecRun(s, off)) return "v";
    if (aligned && s[rank - 1] === 0) return "s";
    return "g";
  });
  return { kinds, out, tail: !aligned };
}

/**
 * Runs `fn` on views of `ts` broadcast to their common shape and disposes the views after, also when `fn`
 * throws (a failed op keeps no view of its inputs alive).
 */
function withBroadcast<T>(op: string, ts: Tensor[], fn: (views: Tensor[]) => T): T {
  const shape = broadcastShapes(op, ...ts.map((t) => t.shape));
  const views: Tensor[] = [];
  try {
    for (const t of ts) views.push(t.expand(shape));
    return fn(views);
  } finally {
    views.forEach((v) => v.dispose());
  }
}

/** Sums a gradient over broadcast dims and casts it to the input's dtype. */
function fitGrad(g: Tensor, shape: readonly number[], dtype: DType): Tensor {
  const s = sumTo(g, shape);
  if (s.dtype === dtype || !isFloat(dtype)) return s;
  const c = cast(s, dtype);
  if (s !== g) s.dispose();
  return c;
}

/** Ties in maximum/minimum split the gradient evenly, as PyTorch does. */
function pick(a: Tensor, b: Tensor, first: Tensor): Tensor {
  return where(first, 1, where(eq(a, b), 0.5, 0));
}

/** Backward rules of the binary ops: (grad, a, b, out, b needs grad) -> [grad a, grad b] before unbroadcast. */
const BINARY_GRAD: Record<
  string,
  (g: Tensor, a: Tensor, b: Tensor, out: Tensor, needB: boolean) => (Tensor | null)[]
> = {
  add: (g) => [g, g],
  sub: (g) => [g, neg(g)],
  mul: (g, a, b) => [mul(g, b), mul(g, a)],
  div: (g, _a, b, out) => [div(g, b), neg(div(mul(g, out), b))],
  pow: (g, a, b, out, needB) => [
    mul(g, mul(b, pow(a, sub(b, 1)))),
    needB ? mul(g, mul(out, log(a))) : null,
  ],
  maximum: (g, a, b) => {
    const w = pick(a, b, gt(a, b));
    return [mul(g, w), mul(g, sub(1, w))];
  },
  minimum: (g, a, b) => {
    const w = pick(a, b, lt(a, b));
    return [mul(g, w), mul(g, sub(1, w))];
  },
};

/** Unary ops that keep an integer dtype; the rest compute in f32 for integer inputs. */
const INT_UNARY = new Set(["neg", "abs", "relu", "copy"]);

function unary(op: string, x: Tensor): Tensor {
  x.check(op);
  if (op === "neg" && x.dtype === "u32") {
    throw new Error(`neg: ${x.describe()} is unsigned; cast to i32 first`);
  }
  const keep = isFloat(x.dtype) || INT_UNARY.has(op);
  const out: DType = keep ? x.dtype : "f32";
  const ct = keep ? computeType(x.dtype) : "f32";
  const expr = op === "abs" && x.dtype === "u32" ? "a" : unaryWgsl[op];
  const y = mapOp(op, [x], out, unaryRef[op], expr, [ct]);
  const rule = UNARY_GRAD[op];
  if (!rule || !isFloat(x.dtype)) return y;
  return record(op, y, [x], [x, y], (g, [xs, ys]) => [rule(g, xs, ys)]);
}

/**
 * Backward rules of the unary ops: (incoming grad, input, output) -> input grad. Those of
 * `unaryGradWgsl` run fused in one pass (a composed chain cost a dispatch per step over the whole tensor:
 * ten for GELU); the rest are one op already.
 */
const UNARY_GRAD: Record<string, (g: Tensor, x: Tensor, y: Tensor) => Tensor> = {
  neg: (g) => neg(g),
  exp: (g, _x, y) => mul(g, y),
  log: (g, x) => div(g, x),
};
for (const op of Object.keys(unaryGradWgsl)) {
  UNARY_GRAD[op] = (g, x, y) => unaryBackward(op, g, unaryGradFrom[op] === "x" ? x : y);
}

/** The fused backward of unary `op`: g * op'(x) from `g` and `v` (x or y, as `unaryGradFrom` says). */
function unaryBackward(op: string, g: Tensor, v: Tensor): Tensor {
  const ref = unaryGradRef[op];
  return mapOp(`${op} backward`, [g, v], promote(g.dtype, v.dtype), ref, unaryGradWgsl[op], ["f32", "f32"]);
}

const COMPARE = new Set(["eq", "ne", "lt", "le", "gt", "ge"]);
const FLOAT_ONLY = new Set(["div", "pow"]);

function binary(op: string, a: Operand, b: Operand): Tensor {
  if (!(a instanceof Tensor) && !(b instanceof Tensor)) {
    throw new Error(`${op}: needs at least one Tensor operand`);
  }
  const ta = a instanceof Tensor ? a : operand(a, b as Tensor);
  const tb = b instanceof Tensor ? b : operand(b, ta);
  try {
    sameDevice(op, ta, tb);
    let dtype = promote(ta.dtype, tb.dtype);
    if (FLOAT_ONLY.has(op) && !isFloat(dtype)) dtype = "f32";
    const out: DType = COMPARE.has(op) ? "u32" : dtype;
    const ct = computeType(dtype);
    const int = !isFloat(dtype);
    const ref = (int && intBinaryRef[op]) || binaryRef[op];
    const r = withBroadcast(op, [ta, tb], (views) => mapOp(op, views, out, ref, binaryWgsl[op], [ct, ct]));
    const rule = BINARY_GRAD[op];
    if (!rule || !isFloat(out)) return r;
    const sa = ta.shape, sb = tb.shape, da = ta.dtype, db = tb.dtype;
    const needB = tb.requiresGrad;
    return record(op, r, [ta, tb], [ta, tb, r], (g, [x, y, z]) => {
      const [ga, gb] = rule(g, x, y, z, needB);
      return [ga && fitGrad(ga, sa, da), gb && fitGrad(gb, sb, db)];
    });
  } finally {
    if (ta !== a) ta.dispose();
    if (tb !== b) tb.dispose();
  }
}

/**
 * Elementwise `a + b` with NumPy broadcasting; numbers act as scalars. Mixed dtypes promote
 * (u32 < i32 < f16 < f32).
 *
 * @example
 * ```ts
 * import { add, tensor } from "seqlab";
 * console.log(await add(tensor([[1], [2]]), tensor([10, 20, 30])).toArray()); // [11, 21, 31, 12, 22, 32]
 * ```
 */
export function add(a: Operand, b: Operand): Tensor {
  return binary("add", a, b);
}
/**
 * Elementwise `a - b` with broadcasting.
 * @example
 * ```ts
 * import { sub, tensor } from "seqlab";
 * console.log(await sub(tensor([5, 7]), 2).toArray()); // [3, 5]
 * ```
 */
export function sub(a: Operand, b: Operand): Tensor {
  return binary("sub", a, b);
}
/**
 * Elementwise `a * b` with broadcasting.
 * @example
 * ```ts
 * import { mul, tensor } from "seqlab";
 * console.log(await mul(tensor([1, 2]), tensor([3, 4])).toArray()); // [3, 8]
 * ```
 */
export function mul(a: Operand, b: Operand): Tensor {
  return binary("mul", a, b);
}
/**
 * Elementwise true division (integers divide as f32).
 * @example
 * ```ts
 * import { div, tensor } from "seqlab";
 * console.log(await div(tensor([1, 3]), 2).toArray()); // [0.5, 1.5]
 * ```
 */
export function div(a: Operand, b: Operand): Tensor {
  return binary("div", a, b);
}
/**
 * Elementwise power; a negative base with an integral exponent keeps its sign.
 * @example
 * ```ts
 * import { pow, tensor } from "seqlab";
 * console.log(await pow(tensor([-2, 3]), 3).toArray()); // [-8, 27]
 * ```
 */
export function pow(a: Operand, b: Operand): Tensor {
  return binary("pow", a, b);
}
/**
 * Elementwise maximum; NaN in either operand gives NaN.
 * @example
 * ```ts
 * import { maximum, tensor } from "seqlab";
 * console.log(await maximum(tensor([1, 5]), 3).toArray()); // [3, 5]
 * ```
 */
export function maximum(a: Operand, b: Operand): Tensor {
  return binary("maximum", a, b);
}
/**
 * Elementwise minimum; NaN in either operand gives NaN.
 * @example
 * ```ts
 * import { minimum, tensor } from "seqlab";
 * console.log(await minimum(tensor([1, 5]), 3).toArray()); // [1, 3]
 * ```
 */
export function minimum(a: Operand, b: Operand): Tensor {
  return binary("minimum", a, b);
}
/**
 * `a == b` as u32 0/1.
 * @example
 * ```ts
 * import { eq, tensor } from "seqlab";
 * console.log(await eq(tensor([1, 2]), 2).toArray()); // Uint32Array [0, 1]
 * ```
 */
export function eq(a: Operand, b: Operand): Tensor {
  return binary("eq", a, b);
}
/**
 * `a != b` as u32 0/1 (true for NaN).
 * @example
 * ```ts
 * import { ne, tensor } from "seqlab";
 * console.log(await ne(tensor([1, 2]), 2).toArray()); // Uint32Array [1, 0]
 * ```
 */
export function ne(a: Operand, b: Operand): Tensor {
  return binary("ne", a, b);
}
/**
 * `a < b` as u32 0/1.
 * @example
 * ```ts
 * import { lt, tensor } from "seqlab";
 * console.log(await lt(tensor([1, 2]), 2).toArray()); // Uint32Array [1, 0]
 * ```
 */
export function lt(a: Operand, b: Operand): Tensor {
  return binary("lt", a, b);
}
/**
 * `a <= b` as u32 0/1.
 * @example
 * ```ts
 * import { le, tensor } from "seqlab";
 * console.log(await le(tensor([1, 3]), 2).toArray()); // Uint32Array [1, 0]
 * ```
 */
export function le(a: Operand, b: Operand): Tensor {
  return binary("le", a, b);
}
/**
 * `a > b` as u32 0/1.
 * @example
 * ```ts
 * import { gt, tensor } from "seqlab";
 * console.log(await gt(tensor([1, 3]), 2).toArray()); // Uint32Array [0, 1]
 * ```
 */
export function gt(a: Operand, b: Operand): Tensor {
  return binary("gt", a, b);
}
/**
 * `a >= b` as u32 0/1.
 * @example
 * ```ts
 * import { ge, tensor } from "seqlab";
 * console.log(await ge(tensor([1, 2]), 2).toArray()); // Uint32Array [0, 1]
 * ```
 */
export function ge(a: Operand, b: Operand): Tensor {
  return binary("ge", a, b);
}

/**
 * Picks `a` where `cond` is non-zero, else `b`, with broadcasting over all three.
 *
 * @example
 * ```ts
 * import { tensor, where } from "seqlab";
 * const x = tensor([-1, 2, -3]);
 * console.log(await where(x.gt(0), x, 0).toArray()); // [0, 2, 0]
 * ```
 */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  cond.check("where");
  const ta = a instanceof Tensor ? a : operand(a, b instanceof Tensor ? b : cond);
  const tb = b instanceof Tensor ? b : operand(b, ta);
  try {
    sameDevice("where", cond, ta, tb);
    const dtype = promote(ta.dtype, tb.dtype);
    const ct = computeType(dtype), cc = computeType(cond.dtype);
    const choose = (x: number, y: number, c: number) => (c !== 0 ? x : y);
    const expr = `select(b, a, c != ${cc}(0))`;
    const r = withBroadcast(
      "where",
      [ta, tb, cond],
      (views) => mapOp("where", views, dtype, choose, expr, [ct, ct, cc]),
    );
    if (!isFloat(dtype)) return r;
    const sa = ta.shape, sb = tb.shape, da = ta.dtype, db = tb.dtype;
    return record("where", r, [cond, ta, tb], [cond], (g, [c]) => [
      null,
      fitGrad(where(c, g, 0), sa, da),
      fitGrad(where(c, 0, g), sb, db),
    ]);
  } finally {
    if (ta !== a) ta.dispose();
    if (tb !== b) tb.dispose();
  }
}

/** An activation fused into {@link biasAct}. */
export type Activation = "gelu" | "silu" | "relu";

/**
 * `act(x + bias)` in one pass, x (..., F) and bias (F): a linear layer's bias and its activation without
 * the (..., F) sum in between. The same numbers as `act(add(x, bias))` (the sum rounds to f32 in both);
 * the backward is one pass for dx = g act'(x + bias), and db sums dx over the leading dims.
 *
 * @example
 * ```ts
 * import { biasAct, tensor } from "seqlab";
 * const x = tensor([[-1, 0], [1, 2]]), b = tensor([1, -1]);
 * console.log(await biasAct(x, b, "relu").toArray()); // [0, 0, 2, 1]
 * ```
 */
export function biasAct(x: Tensor, bias: Tensor, act: Activation): Tensor {
  sameDevice("biasAct", x, bias);
  if (!ACTIVATIONS.includes(act)) {
    throw new Error(`biasAct: act must be one of ${ACTIVATIONS.join(", ")}, got ${JSON.stringify(act)}`);
  }
  if (!isFloat(x.dtype) || !isFloat(bias.dtype)) {
    throw new Error(`biasAct: x and bias must be float tensors, got ${x.describe()} and ${bias.describe()}`);
  }
  const F = x.shape[x.rank - 1];
  if (x.rank === 0 || bias.rank !== 1 || bias.shape[0] !== F) {
    throw new Error(
      `biasAct: bias must be 1-D with x's last dim: x is ${fmt(x.shape)}, bias ${fmt(bias.shape)}`,
    );
  }
  const dtype = promote(x.dtype, bias.dtype);
  const fwd = unaryRef[act];
  const y = withBroadcast(
    "biasAct",
    [x, bias],
    (v) => mapOp("biasAct", v, dtype, (a, b) => fwd(a + b), `${act}_(a + b)`, ["f32", "f32"]),
  );
  const sx = x.shape, dx = x.dtype, db = bias.dtype;
  const needX = x.requiresGrad, needB = bias.requiresGrad;
  return record("biasAct", y, [x, bias], [x, bias], (g, [xs, bs]) => {
    const gh = withBroadcast("biasAct backward", [g, xs, bs], (v) =>
      mapOp(
        "biasAct backward",
        v,
        promote(g.dtype, dtype),
        (gg, a, b) => actBackwardRef(act, gg, a + b),
        `${act}_bwd(a, b + c)`,
        ["f32", "f32", "f32"],
      ));
    return [needX ? fitGrad(gh, sx, dx) : null, needB ? fitGrad(gh, [F], db) : null];
  });
}

/**
 * A contiguous copy of a view (a plain new view when the layout is already contiguous).
 *
 * @example
 * ```ts
 * import { arange, contiguous } from "seqlab";
 * const t = contiguous(arange(6).reshape([2, 3]).transpose());
 * console.log(t.isContiguous, await t.toArray()); // true [0, 3, 1, 4, 2, 5]
 * ```
 */
export function contiguous(x: Tensor): Tensor {
  x.check("contiguous");
  const y = x.isContiguous
    ? x.view(x.shape, contiguousStrides(x.shape), x.offset)
    : mapOp("contiguous", [x], x.dtype, unaryRef.copy, "a", [computeType(x.dtype)]);
  return record("contiguous", y, [x], [], (g) => [g]);
}

/**
 * Writes `src` (broadcast to `dst`'s shape, converted to its dtype) into the elements `dst` views, in
 * place: the way to fill a slice of a tensor. Not differentiable.
 *
 * @example
 * ```ts
 * import { copyInto, tensor, zeros } from "seqlab";
 * const z = zeros([2, 3]);
 * copyInto(z.slice([null, [1, 3]]), tensor([7, 8]));
 * console.log(await z.toArray()); // [0, 7, 8, 0, 7, 8]
 * ```
 */
export function copyInto(dst: Tensor, src: Tensor): Tensor {
  sameDevice("copyInto", dst, src);
  const view = src.expand(broadcastShapes("copyInto", dst.shape, src.shape));
  try {
    if (view.rank !== dst.rank || view.shape.some((d, i) => d !== dst.shape[i])) {
      throw new Error(`copyInto: src ${fmt(src.shape)} does not broadcast to dst ${fmt(dst.shape)}`);
    }
    const ct = isFloat(dst.dtype) ? "f32" : computeType(src.dtype);
    mapOp("copyInto", [view], dst.dtype, unaryRef.copy, "a", [isFloat(src.dtype) ? "f32" : ct], dst);
    return dst;
  } finally {
    view.dispose();
  }
}

/**
 * Converts elements to another dtype (floats to ints truncate toward zero and saturate; NaN becomes 0).
 *
 * @example
 * ```ts
 * import { cast, tensor } from "seqlab";
 * console.log(await cast(tensor([1.7, -2.5]), "i32").toArray()); // Int32Array [1, -2]
 * ```
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  x.check("cast");
  checkDType("cast", dtype);
  if (dtype === x.dtype) return contiguous(x);
  const ct = isFloat(dtype) ? "f32" : computeType(x.dtype);
  // WGSL float-to-int conversion saturates; NaN maps to 0 on the reference and is pinned here to match
  const expr = isFloat(x.dtype) && !isFloat(dtype) ? `select(a, 0.0, is_nan(a))` : "a";
  // int-to-int casts reinterpret modulo 2^32 (as WGSL does); float-to-int follows toDType
  const ref = isFloat(x.dtype) ? (v: number) => toDType(v, dtype) : (v: number) => v;
  const y = mapOp("cast", [x], dtype, ref, expr, [isFloat(x.dtype) ? "f32" : ct]);
  if (!isFloat(x.dtype) || !isFloat(dtype)) return y;
  const from = x.dtype;
  return record("cast", y, [x], [], (g) => [cast(g, from)]);
}

/**
 * Elementwise negation.
 * @example
 * ```ts
 * import { neg, tensor } from "seqlab";
 * console.log(await neg(tensor([1, -2])).toArray()); // [-1, 2]
 * ```
 */
export function neg(x: Tensor): Tensor {
  return unary("neg", x);
}
/**
 * Elementwise absolute value.
 * @example
 * ```ts
 * import { abs, tensor } from "seqlab";
 * console.log(await abs(tensor([1, -2])).toArray()); // [1, 2]
 * ```
 */
export function abs(x: Tensor): Tensor {
  return unary("abs", x);
}
/**
 * Elementwise e^x.
 * @example
 * ```ts
 * import { exp, tensor } from "seqlab";
 * console.log(await exp(tensor([0])).toArray()); // [1]
 * ```
 */
export function exp(x: Tensor): Tensor {
  return unary("exp", x);
}
/**
 * Elementwise natural logarithm.
 * @example
 * ```ts
 * import { log, tensor } from "seqlab";
 * console.log(await log(tensor([1])).toArray()); // [0]
 * ```
 */
export function log(x: Tensor): Tensor {
  return unary("log", x);
}
/**
 * Elementwise square root.
 * @example
 * ```ts
 * import { sqrt, tensor } from "seqlab";
 * console.log(await sqrt(tensor([4, 9])).toArray()); // [2, 3]
 * ```
 */
export function sqrt(x: Tensor): Tensor {
  return unary("sqrt", x);
}
/**
 * Elementwise 1 / sqrt(x).
 * @example
 * ```ts
 * import { rsqrt, tensor } from "seqlab";
 * console.log(await rsqrt(tensor([4])).toArray()); // [0.5]
 * ```
 */
export function rsqrt(x: Tensor): Tensor {
  return unary("rsqrt", x);
}
/**
 * Elementwise max(x, 0) (NaN stays NaN).
 * @example
 * ```ts
 * import { relu, tensor } from "seqlab";
 * console.log(await relu(tensor([-1, 2])).toArray()); // [0, 2]
 * ```
 */
export function relu(x: Tensor): Tensor {
  return unary("relu", x);
}
/**
 * Elementwise GELU, the exact erf form 0.5 x (1 + erf(x / sqrt 2)).
 * @example
 * ```ts
 * import { gelu, tensor } from "seqlab";
 * console.log(await gelu(tensor([0, 1])).toArray()); // [0, 0.8413]
 * ```
 */
export function gelu(x: Tensor): Tensor {
  return unary("gelu", x);
}
/**
 * Elementwise SiLU (swish): x * sigmoid(x).
 * @example
 * ```ts
 * import { silu, tensor } from "seqlab";
 * console.log(await silu(tensor([0])).toArray()); // [0]
 * ```
 */
export function silu(x: Tensor): Tensor {
  return unary("silu", x);
}
/**
 * Elementwise error function erf(x).
 * @example
 * ```ts
 * import { erf, tensor } from "seqlab";
 * console.log(await erf(tensor([0, 1])).toArray()); // [0, 0.8427]
 * ```
 */
export function erf(x: Tensor): Tensor {
  return unary("erf", x);
}
/**
 * Elementwise logistic sigmoid.
 * @example
 * ```ts
 * import { sigmoid, tensor } from "seqlab";
 * console.log(await sigmoid(tensor([0])).toArray()); // [0.5]
 * ```
 */
export function sigmoid(x: Tensor): Tensor {
  return unary("sigmoid", x);
}
/**
 * Elementwise hyperbolic tangent.
 * @example
 * ```ts
 * import { tanh, tensor } from "seqlab";
 * console.log(await tanh(tensor([0])).toArray()); // [0]
 * ```
 */
export function tanh(x: Tensor): Tensor {
  return unary("tanh", x);
}
/**
 * Elementwise softplus log(1 + e^x), stable for large |x|.
 * @example
 * ```ts
 * import { softplus, tensor } from "seqlab";
 * console.log(await softplus(tensor([0])).toArray()); // [0.6931]
 * ```
 */
export function softplus(x: Tensor): Tensor {
  return unary("softplus", x);
}

// the Tensor method table
registerOps({ contiguous, copyInto, cast });
registerOps({ add, sub, mul, div, pow, maximum, minimum, eq, ne, lt, le, gt, ge });
registerOps({ neg, abs, exp, log, sqrt, rsqrt, relu, gelu, silu, sigmoid, tanh, softplus });
