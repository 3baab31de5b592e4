/**
 * Neural-network modules: a small {@link Module} base (named parameters, train/eval mode, children found by
 * walking the module's own fields, as tinygrad's `get_state_dict` does), the layers `Linear`, `Embedding`,
 * `LayerNorm`, `RMSNorm`, `Dropout`, `Sequential`, and the initialisers in {@link init}.
 *
 * Parameters are leaves made with `param` (`requiresGrad`, exempt from tidy scopes); they live until
 * `module.dispose()`. A module's forward pass is plain tensor ops, so autograd comes for free.
 *
 * @example
 * ```ts
 * import { Linear, Sequential, randn, ReLU } from "seqlab";
 * const mlp = new Sequential(new Linear(4, 8, { seed: 1 }), new ReLU(), new Linear(8, 2, { seed: 2 }));
 * console.log(mlp.forward(randn([3, 4])).shape); // [3, 2]
 * console.log(mlp.namedParameters().map(([n]) => n)); // ["layers.0.weight", "layers.0.bias", ...]
 * mlp.dispose();
 * ```
 * @module
 */

import type { DType } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { param } from "../runtime/autograd.ts";
import { fmt, type Shape } from "../runtime/shape.ts";
import { Tensor } from "../runtime/tensor.ts";
import { full, rand, randn } from "../ops/core/creation.ts";
import { type Activation, add, biasAct, ge, gelu, mul, relu, tanh, where } from "../ops/core/elementwise.ts";
import { gather } from "../ops/core/layout.ts";
import { matmul } from "../ops/core/matmul.ts";
import { layerNorm, rmsNorm } from "../ops/core/rowwise.ts";

// ---------------------------------------------------------------------------------------------------------
// initialisers

/** Where and how an initialiser creates its tensor. */
export interface InitOptions {
  /** A seed for this tensor (else the next stream of the global seed, see `manualSeed`). */
  seed?: number;
  /** Device (default: the default device). */
  device?: DeviceName;
  /** Float dtype (default f32). */
  dtype?: DType;
}

/** Options of the fan-based initialisers (xavier, kaiming). */
export interface FanOptions extends InitOptions {
  /** Scale of the standard deviation or bound (xavier: default 1). */
  gain?: number;
  /** Override the fan-in computed from the shape. */
  fanIn?: number;
  /** Override the fan-out computed from the shape. */
  fanOut?: number;
}

/**
 * Fan-in and fan-out of a weight shape in seqlab's (..., in, out) layout: a Linear weight is (in, out), so
 * fanIn = shape[-2] and fanOut = shape[-1]; leading dims (heads, experts) are independent matrices. A 1-D
 * shape has fanIn = fanOut = its length.
 */
function fans(op: string, shape: Shape, o: FanOptions): { fanIn: number; fanOut: number } {
  if (shape.length === 0) throw new Error(`${op}: cannot compute fans of a scalar shape []`);
  const fanIn = o.fanIn ?? (shape.length === 1 ? shape[0] : shape[shape.length - 2]);
  const fanOut = o.fanOut ?? shape[shape.length - 1];
  if (!(fanIn > 0) || !(fanOut > 0)) {
    throw new Error(`${op}: fan-in ${fanIn} and fan-out ${fanOut} of ${fmt(shape)} must be positive`);
  }
  return { fanIn, fanOut };
}

/** Gains of kaiming initialisation per nonlinearity (as torch.nn.init.calculate_gain). */
function kaimingGain(nonlinearity: KaimingOptions["nonlinearity"], a: number): number {
  switch (nonlinearity ?? "relu") {
    case "linear":
    case "sigmoid":
      return 1;
    case "tanh":
      return 5 / 3;
    case "relu":
      return Math.SQRT2;
    case "leakyRelu":
      return Math.sqrt(2 / (1 + a * a));
    default:
      throw new Error(
        `kaiming: unknown nonlinearity ${JSON.stringify(nonlinearity)}; ` +
          `expected linear, sigmoid, tanh, relu or leakyRelu`,
      );
  }
}

/** Options of {@link init}'s kaiming initialisers. */
export interface KaimingOptions extends FanOptions {
  /** Which fan keeps the variance: fanIn (forward pass, default) or fanOut (backward pass). */
  mode?: "fanIn" | "fanOut";
  /** The nonlinearity that follows (default relu). */
  nonlinearity?: "linear" | "sigmoid" | "tanh" | "relu" | "leakyRelu";
  /** Negative slope for leakyRelu (default 0.01). */
  a?: number;
}

function kaimingScale(op: string, shape: Shape, o: KaimingOptions): number {
  const { fanIn, fanOut } = fans(op, shape, o);
  const fan = (o.mode ?? "fanIn") === "fanIn" ? fanIn : fanOut;
  return (o.gain ?? kaimingGain(o.nonlinearity, o.a ?? 0.01)) / Math.sqrt(fan);
}

/** The initialisers (see {@link init}). */
export interface Initialisers {
  /** Normal samples N(mean, std^2) (defaults 0, 1). */
  normal(shape: Shape, o?: InitOptions & { mean?: number; std?: number }): Tensor;
  /** Uniform samples in [low, high) (default [0, 1)). */
  uniform(shape: Shape, o?: InitOptions & { low?: number; high?: number }): Tensor;
  /** Xavier/Glorot uniform: U(-b, b) with b = gain sqrt(6 / (fanIn + fanOut)). */
  xavierUniform(shape: Shape, o?: FanOptions): Tensor;
  /** Xavier/Glorot normal: N(0, gain^2 2 / (fanIn + fanOut)). */
  xavierNormal(shape: Shape, o?: FanOptions): Tensor;
  /** Kaiming/He uniform: U(-b, b) with b = gain sqrt(3 / fan). */
  kaimingUniform(shape: Shape, o?: KaimingOptions): Tensor;
  /** Kaiming/He normal: N(0, gain^2 / fan). */
  kaimingNormal(shape: Shape, o?: KaimingOptions): Tensor;
  /** Zeros. */
  zeros(shape: Shape, o?: InitOptions): Tensor;
  /** Ones. */
  ones(shape: Shape, o?: InitOptions): Tensor;
}

/**
 * Initialisers: each returns a new tensor of `shape` (seeded, identical on both backends for `uniform`
 * variants). Fans follow seqlab's (..., in, out) weight layout.
 *
 * - `normal(shape, {mean, std})`, `uniform(shape, {low, high})`
 * - `xavierUniform` / `xavierNormal`: variance 2 gain^2 / (fanIn + fanOut) (Glorot and Bengio, 2010)
 * - `kaimingUniform` / `kaimingNormal`: variance gain^2 / fan, gain sqrt(2) for relu (He et al., 2015)
 * - `zeros`, `ones`
 *
 * @example
 * ```ts
 * import { init } from "seqlab";
 * const w = init.xavierUniform([256, 128], { seed: 1 }); // U(-b, b), b = sqrt(6 / (256 + 128))
 * const k = init.kaimingNormal([784, 100], { seed: 2 }); // N(0, 2 / 784)
 * const b = init.zeros([128]);
 * console.log(w.shape, k.shape, b.shape); // [256, 128] [784, 100] [128]
 * ```
 */
export const init: Initialisers = {
  /** Normal samples N(mean, std^2) (defaults 0, 1). */
  normal(shape: Shape, o: InitOptions & { mean?: number; std?: number } = {}): Tensor {
    return randn(shape, { ...o, mean: o.mean ?? 0, std: o.std ?? 1 });
  },
  /** Uniform samples in [low, high) (default [0, 1)). */
  uniform(shape: Shape, o: InitOptions & { low?: number; high?: number } = {}): Tensor {
    return rand(shape, { ...o, low: o.low ?? 0, high: o.high ?? 1 });
  },
  /** Xavier/Glorot uniform: U(-b, b) with b = gain sqrt(6 / (fanIn + fanOut)). */
  xavierUniform(shape: Shape, o: FanOptions = {}): Tensor {
    const { fanIn, fanOut } = fans("xavierUniform", shape, o);
    const b = (o.gain ?? 1) * Math.sqrt(6 / (fanIn + fanOut));
    return rand(shape, { ...o, low: -b, high: b });
  },
  /** Xavier/Glorot normal: N(0, gain^2 2 / (fanIn + fanOut)). */
  xavierNormal(shape: Shape, o: FanOptions = {}): Tensor {
    const { fanIn, fanOut } = fans("xavierNormal", shape, o);
    return randn(shape, { ...o, std: (o.gain ?? 1) * Math.sqrt(2 / (fanIn + fanOut)) });
  },
  /** Kaiming/He uniform: U(-b, b) with b = gain sqrt(3 / fan). */
  kaimingUniform(shape: Shape, o: KaimingOptions = {}): Tensor {
    const b = Math.sqrt(3) * kaimingScale("kaimingUniform", shape, o);
    return rand(shape, { ...o, low: -b, high: b });
  },
  /** Kaiming/He normal: N(0, gain^2 / fan). */
  kaimingNormal(shape: Shape, o: KaimingOptions = {}): Tensor {
    return randn(shape, { ...o, std: kaimingScale("kaimingNormal", shape, o) });
  },
  /** Zeros. */
  zeros(shape: Shape, o: InitOptions = {}): Tensor {
    return full(shape, 0, o);
  },
  /** Ones. */
  ones(shape: Shape, o: InitOptions = {}): Tensor {
    return full(shape, 1, o);
  },
};

/** An initialiser: creates a tensor of `shape` from a seed, device and dtype. */
export type Initializer = (shape: Shape, o: InitOptions) => Tensor;

// ---------------------------------------------------------------------------------------------------------
// Module

/**
 * Base of all layers. Tensors and children are the module's own enumerable fields: a `Tensor` field
 * with `requiresGrad` (made with `param`) is a parameter, any other `Tensor` field a buffer (a constant
 * table, a frozen weight: saved in checkpoints, not trained), a `Module` field a child, and arrays of
 * either are numbered (`layers.0.weight`). Names join field names with dots, in field order; a tensor
 * shared by two modules (tied weights) is listed once, under its first name. Keep scratch tensors in
 * `#private` fields (not enumerable) or locals.
 *
 * @example
 * ```ts
 * import { init, Module, param, type Tensor } from "seqlab";
 * class Scale extends Module {
 *   gain = param(init.ones([4]));
 *   forward(x: Tensor): Tensor {
 *     return x.mul(this.gain);
 *   }
 * }
 * const m = new Scale();
 * console.log(m.namedParameters().map(([n, t]) => [n, t.shape])); // [["gain", [4]]]
 * console.log(m.eval().training); // false
 * m.dispose();
 * ```
 */
export abstract class Module {
  /** Train mode (dropout active) or eval mode. Set with {@link Module.train} / {@link Module.eval}. */
  training = true;

  /** The layer's computation. */
  abstract forward(x: Tensor): Tensor;

  /** [name, child] for each direct child module, in field order. */
  namedChildren(): [string, Module][] {
    const out: [string, Module][] = [];
    for (const [k, v] of Object.entries(this)) {
      if (v instanceof Module) out.push([k, v]);
      else if (Array.isArray(v)) {
        v.forEach((x, i) => {
          if (x instanceof Module) out.push([`${k}.${i}`, x]);
        });
      }
    }
    return out;
  }

  /**
   * [name, tensor] for every parameter of this module and its descendants (depth first, field order).
   *
   * @example
   * ```ts
   * import { Linear } from "seqlab";
   * const l = new Linear(3, 2);
   * console.log(l.namedParameters().map(([n, t]) => `${n} ${t.shape}`)); // ["weight 3,2", "bias 2"]
   * l.dispose();
   * ```
   */
  namedParameters(): [string, Tensor][] {
    return this.namedTensors().filter(([, t]) => t.requiresGrad);
  }

  /**
   * [name, tensor] for every buffer (a tensor field without `requiresGrad`) of this module and its
   * descendants.
   *
   * @example
   * ```ts
   * import { Module, param, randn, type Tensor, zeros } from "seqlab";
   * class Shift extends Module {
   *   w = param(randn([4]));
   *   table = zeros([4]); // a buffer
   *   forward(x: Tensor): Tensor {
   *     return x.mul(this.w).add(this.table);
   *   }
   * }
   * const m = new Shift();
   * console.log(m.namedBuffers().map(([n]) => n), m.parameters().length); // ["table"] 1
   * m.dispose();
   * ```
   */
  namedBuffers(): [string, Tensor][] {
    return this.namedTensors().filter(([, t]) => !t.requiresGrad);
  }

  /**
   * [name, tensor] for every parameter and buffer, in field order: what a checkpoint holds.
   *
   * @example
   * ```ts
   * import { LayerNorm } from "seqlab";
   * const n = new LayerNorm(4);
   * console.log(n.namedTensors().map(([name]) => name)); // ["weight", "bias"]
   * n.dispose();
   * ```
   */
  namedTensors(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    const visit = (m: Module, prefix: string, path: Set<Module>) => {
      if (path.has(m)) throw new Error(`Module: ${prefix.slice(0, -1)} contains itself`);
      path.add(m);
      for (const [k, v] of Object.entries(m)) {
        const items: [string, unknown][] = Array.isArray(v) ? v.map((x, i) => [`${k}.${i}`, x]) : [[k, v]];
        for (const [name, x] of items) {
          if (x instanceof Tensor) {
            if (!seen.has(x)) {
              seen.add(x);
              out.push([prefix + name, x]);
            }
          } else if (x instanceof Module) visit(x, `${prefix}${name}.`, path);
        }
      }
      path.delete(m);
    };
    visit(this, "", new Set());
    return out;
  }

  /**
   * Every parameter (see {@link Module.namedParameters}), for an optimiser.
   *
   * @example
   * ```ts
   * import { Linear, SGD } from "seqlab";
   * const l = new Linear(3, 2);
   * const opt = new SGD(l.parameters(), { lr: 0.1 });
   * console.log(l.parameters().length); // 2
   * opt.dispose();
   * l.dispose();
   * ```
   */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /**
   * Number of parameter elements.
   *
   * @example
   * ```ts
   * import { Linear } from "seqlab";
   * const l = new Linear(3, 2);
   * console.log(l.numParameters()); // 8
   * l.dispose();
   * ```
   */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }

  /**
   * Sets train mode (default) or eval mode on this module and every descendant. Returns this.
   *
   * @example
   * ```ts
   * import { Dropout, Sequential } from "seqlab";
   * const m = new Sequential(new Dropout(0.5)).train(false);
   * console.log(m.layers[0].training); // false
   * ```
   */
  train(mode = true): this {
    this.training = mode;
    for (const [, c] of this.namedChildren()) c.train(mode);
    return this;
  }

  /**
   * Eval mode: `train(false)`. Returns this.
   *
   * @example
   * ```ts
   * import { Dropout } from "seqlab";
   * console.log(new Dropout(0.1).eval().training); // false
   * ```
   */
  eval(): this {
    return this.train(false);
  }

  /**
   * Clears every parameter's `.grad`.
   *
   * @example
   * ```ts
   * import { Linear, randn } from "seqlab";
   * const l = new Linear(3, 2);
   * l.forward(randn([4, 3])).sum().backward();
   * l.zeroGrad();
   * console.log(l.weight.grad); // null
   * l.dispose();
   * ```
   */
  zeroGrad(): void {
    for (const p of this.parameters()) p.zeroGrad();
  }

  /**
   * Frees every parameter (and its gradient) and buffer.
   *
   * @example
   * ```ts
   * import { Linear } from "seqlab";
   * const l = new Linear(3, 2);
   * l.dispose();
   * console.log(l.weight.disposed); // true
   * ```
   */
  dispose(): void {
    for (const [, t] of this.namedTensors()) {
      t.zeroGrad();
      t.dispose();
    }
  }
}

/** Creation options shared by the layers. */
export interface LayerOptions {
  /** Seed of the layer's first parameter; later ones use seed + 1, ... (default: global streams). */
  seed?: number;
  /** Device of the parameters (default: the default device). */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/** The seed of a layer's k-th random parameter. */
function seedAt(o: LayerOptions, k: number): number | undefined {
  return o.seed === undefined ? undefined : o.seed + k;
}

/**
 * y = x W + b with W of shape (in, out) (seqlab's layout: no transpose in the forward pass) and b (out).
 * Default init as PyTorch's: W and b uniform in ±1/sqrt(in).
 *
 * @example
 * ```ts
 * import { Linear, randn } from "seqlab";
 * const l = new Linear(16, 4, { seed: 0 });
 * console.log(l.forward(randn([2, 8, 16])).shape); // [2, 8, 4]
 * l.dispose();
 * ```
 */
export class Linear extends Module {
  /** (in, out). */
  weight: Tensor;
  /** (out), or null without bias. */
  bias: Tensor | null;
  /** Creates the layer's parameters. */
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    o: LayerOptions & { bias?: boolean; weightInit?: Initializer; biasInit?: Initializer } = {},
  ) {
    super();
    for (const [n, v] of [["inFeatures", inFeatures], ["outFeatures", outFeatures]] as const) {
      if (!Number.isInteger(v) || v <= 0) {
        throw new Error(`Linear: ${n} must be a positive integer, got ${v}`);
      }
    }
    const b = 1 / Math.sqrt(inFeatures);
    const base = { device: o.device, dtype: o.dtype };
    const wi = o.weightInit ?? ((s, io) => init.uniform(s, { ...io, low: -b, high: b }));
    const bi = o.biasInit ?? ((s, io) => init.uniform(s, { ...io, low: -b, high: b }));
    this.weight = param(wi([inFeatures, outFeatures], { ...base, seed: seedAt(o, 0) }));
    this.bias = o.bias === false ? null : param(bi([outFeatures], { ...base, seed: seedAt(o, 1) }));
  }

  /** x (..., in) -> (..., out); with `act`, act(x W + b) with the bias and activation in one pass. */
  forward(x: Tensor, act?: Activation): Tensor {
    if (x.shape[x.rank - 1] !== this.inFeatures) {
      throw new Error(`Linear: input ${x.describe()} does not end in inFeatures ${this.inFeatures}`);
    }
    // (..., in) -> (rows, in), a view when x is contiguous: the 2-D product serves every rank, and its
    // backward is one dW = x^T g over all rows (a batched matmul would compute dW per batch entry and sum)
    const x2 = x.rank > 2 ? x.reshape([-1, this.inFeatures]) : x; // (rows, in)
    const y = matmul(x2, this.weight); // (rows, out)
    if (x2 !== x) x2.dispose(); // the graph keeps what backward needs
    const r = act ? (this.bias ? biasAct(y, this.bias, act) : y[act]()) : this.bias ? add(y, this.bias) : y;
    if (r !== y) y.dispose();
    if (x.rank <= 2) return r;
    const out = r.reshape([...x.shape.slice(0, -1), this.outFeatures]); // (..., out)
    r.dispose();
    return out;
  }
}

/**
 * A lookup table: integer indices (any shape) -> rows of a (num, dim) weight, init N(0, 1). Its gradient
 * is a scatter-add into the rows that were used.
 *
 * @example
 * ```ts
 * import { Embedding, tensor } from "seqlab";
 * const e = new Embedding(10, 4, { seed: 1 });
 * console.log(e.forward(tensor([[1, 2, 3]], { dtype: "i32" })).shape); // [1, 3, 4]
 * e.dispose();
 * ```
 */
export class Embedding extends Module {
  /** (num, dim). */
  weight: Tensor;
  /** Creates the table. */
  constructor(
    readonly num: number,
    readonly dim: number,
    o: LayerOptions & { weightInit?: Initializer } = {},
  ) {
    super();
    for (const [n, v] of [["num", num], ["dim", dim]] as const) {
      if (!Number.isInteger(v) || v <= 0) {
        throw new Error(`Embedding: ${n} must be a positive integer, got ${v}`);
      }
    }
    const wi = o.weightInit ?? init.normal;
    this.weight = param(wi([num, dim], { device: o.device, dtype: o.dtype, seed: seedAt(o, 0) }));
  }

  /** indices (...) i32 or u32 -> (..., dim). */
  forward(indices: Tensor): Tensor {
    return gather(this.weight, indices, 0);
  }
}

/**
 * Layer normalisation over the last dimension with a learned scale (ones) and shift (zeros).
 *
 * @example
 * ```ts
 * import { LayerNorm, randn } from "seqlab";
 * const ln = new LayerNorm(8);
 * console.log(ln.forward(randn([2, 8])).shape); // [2, 8]
 * ln.dispose();
 * ```
 */
export class LayerNorm extends Module {
  /** (dim) or null without affine parameters. */
  weight: Tensor | null;
  /** (dim) or null. */
  bias: Tensor | null;
  /** Creates the scale and shift. */
  constructor(readonly dim: number, o: LayerOptions & { eps?: number; affine?: boolean } = {}) {
    super();
    this.eps = o.eps ?? 1e-5;
    const affine = o.affine ?? true;
    const base = { device: o.device, dtype: o.dtype };
    this.weight = affine ? param(init.ones([dim], base)) : null;
    this.bias = affine ? param(init.zeros([dim], base)) : null;
  }
  /** Added to the variance. */
  readonly eps: number;
  /** x (..., dim) -> (..., dim). */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/**
 * RMS normalisation over the last dimension with a learned scale (ones).
 *
 * @example
 * ```ts
 * import { RMSNorm, randn } from "seqlab";
 * const n = new RMSNorm(8);
 * console.log(n.forward(randn([2, 8])).shape); // [2, 8]
 * n.dispose();
 * ```
 */
export class RMSNorm extends Module {
  /** (dim). */
  weight: Tensor;
  /** Creates the scale. */
  constructor(readonly dim: number, o: LayerOptions & { eps?: number } = {}) {
    super();
    this.eps = o.eps ?? 1e-6;
    this.weight = param(init.ones([dim], { device: o.device, dtype: o.dtype }));
  }
  /** Added to the mean square. */
  readonly eps: number;
  /** x (..., dim) -> (..., dim). */
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/** Mixes a layer seed and a call counter into one Philox key (splitmix32 steps; < 2^53). */
function mixSeed(seed: number, counter: number): number {
  const mix = (x: number) => {
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    return (x ^ (x >>> 16)) >>> 0;
  };
  const hi = mix((seed >>> 0) ^ mix(counter + 0x9e3779b9));
  const lo = mix(Math.floor(seed / 2 ** 32) + mix(counter ^ 0x7f4a7c15));
  return (hi & 0x1fffff) * 2 ** 32 + lo;
}

/**
 * Zeroes each element with probability `p` in train mode and scales the rest by 1/(1-p); the identity in
 * eval mode (it returns its input). The mask is `rand(shape) >= p` with a Philox key derived from the
 * layer's seed and a call counter, so a seeded run draws the same masks on every run (and the same on
 * both backends); without a seed, masks come from the global seed's streams (`manualSeed`).
 *
 * @example
 * ```ts
 * import { Dropout, ones } from "seqlab";
 * const d = new Dropout(0.5, { seed: 3 });
 * const y = d.forward(ones([8]));
 * console.log(await y.toArray()); // each element 0 or 2
 * console.log(d.eval().forward(ones([2])).shape); // [2]
 * ```
 */
export class Dropout extends Module {
  /** Forward calls in train mode so far (the mask's counter). */
  calls = 0;
  readonly #seed: number | undefined;
  /** Creates the layer; `p` in [0, 1). */
  constructor(readonly p: number, o: { seed?: number } = {}) {
    super();
    if (!(p >= 0 && p < 1)) throw new Error(`Dropout: p must be in [0, 1), got ${p}`);
    if (o.seed !== undefined && (!Number.isSafeInteger(o.seed) || o.seed < 0)) {
      throw new Error(`Dropout: seed must be a non-negative integer, got ${o.seed}`);
    }
    this.#seed = o.seed;
  }
  /** x -> x masked and scaled (train mode), x itself (eval mode or p = 0). */
  forward(x: Tensor): Tensor {
    if (!this.training || this.p === 0) return x;
    const seed = this.#seed === undefined ? undefined : mixSeed(this.#seed, this.calls);
    this.calls++;
    const u = rand(x.shape, { seed, device: x.device });
    const keepMask = ge(u, this.p);
    u.dispose();
    const scaled = mul(x, 1 / (1 - this.p));
    const y = where(keepMask, scaled, 0);
    keepMask.dispose();
    scaled.dispose();
    return y;
  }
}

/**
 * Elementwise max(x, 0) as a module (for {@link Sequential}).
 *
 * @example
 * ```ts
 * import { ReLU, tensor } from "seqlab";
 * console.log(await new ReLU().forward(tensor([-1, 2])).toArray()); // [0, 2]
 * ```
 */
export class ReLU extends Module {
  /** max(x, 0). */
  forward(x: Tensor): Tensor {
    return relu(x);
  }
}

/**
 * Elementwise tanh as a module (for {@link Sequential}).
 *
 * @example
 * ```ts
 * import { Tanh, tensor } from "seqlab";
 * console.log(new Tanh().forward(tensor([0, 1])).shape); // [2]
 * ```
 */
export class Tanh extends Module {
  /** tanh(x). */
  forward(x: Tensor): Tensor {
    return tanh(x);
  }
}

/**
 * Elementwise GELU (erf form) as a module (for {@link Sequential}).
 *
 * @example
 * ```ts
 * import { GELU, tensor } from "seqlab";
 * console.log(new GELU().forward(tensor([0, 1])).shape); // [2]
 * ```
 */
export class GELU extends Module {
  /** gelu(x). */
  forward(x: Tensor): Tensor {
    return gelu(x);
  }
}

/**
 * Applies modules in order; parameters are named `layers.<i>.<name>`. Intermediate outputs are freed as
 * soon as the next layer has consumed them (the graph keeps what backward needs).
 *
 * @example
 * ```ts
 * import { Linear, randn, ReLU, Sequential } from "seqlab";
 * const net = new Sequential(new Linear(2, 8, { seed: 1 }), new ReLU(), new Linear(8, 1, { seed: 2 }));
 * console.log(net.forward(randn([5, 2])).shape, net.numParameters()); // [5, 1] 33
 * net.dispose();
 * ```
 */
export class Sequential extends Module {
  /** The modules, applied in order. */
  readonly layers: Module[];
  /** Chains `layers`. */
  constructor(...layers: Module[]) {
    super();
    for (const [i, l] of layers.entries()) {
      if (!(l instanceof Module)) {
        throw new Error(`Sequential: layer ${i} is not a Module (got ${String(l)})`);
      }
    }
    this.layers = layers;
  }
  /** Each layer's output feeds the next. */
  forward(x: Tensor): Tensor {
    let h = x;
    for (const l of this.layers) {
      const next = l.forward(h);
      if (h !== x && next !== h) h.dispose();
      h = next;
    }
    return h;
  }
}
