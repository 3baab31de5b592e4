/**
 * The Tensor type: a strided view (shape, strides, offset) over reference-counted storage on one device.
 * Ops live in ops/; the methods here delegate to them through the method table of runtime/tensor_ops.ts,
 * which the op modules fill when they load, so this file depends on no op.
 * @module
 */

import { type DType, isFloat, itemSize, type TypedArray } from "./dtype.ts";
import { allocArray } from "./dtype.ts";
import { type DeviceName, gpu } from "./device.ts";
import { ledgerAlloc, ledgerFree } from "./memory.ts";
import { contiguousStrides, fmt, normAxis, numel, type Shape } from "./shape.ts";
import { ops } from "./tensor_ops.ts";

/** Where a tensor's elements live: a typed array on cpu, a GPU buffer on webgpu. Shared by views. */
export class Storage {
  /** Number of tensors (views) holding this storage. */
  refs = 1;
  /** Bytes the ledger charged for it. */
  readonly bytes: number;
  /** Wraps host data or a GPU buffer; the cpu ledger is charged here, webgpu's by the pool. */
  constructor(
    readonly device: DeviceName,
    readonly dtype: DType,
    /** Capacity in elements. */
    readonly length: number,
    readonly data: TypedArray | null,
    readonly buffer: GPUBuffer | null,
  ) {
    this.bytes = data ? data.byteLength : buffer!.size;
    if (data) ledgerAlloc("cpu", this.bytes); // webgpu allocations are charged by the pool
  }

  /** Drops one reference; frees (or pools) the memory at zero. */
  release(): void {
    if (--this.refs > 0) return;
    if (this.data) ledgerFree("cpu", this.bytes);
    else gpu().release(this.buffer!);
  }
}

/** Allocates uninitialised storage for `n` elements. `what` names the tensor in errors. */
export function newStorage(
  device: DeviceName,
  dtype: DType,
  n: number,
  what: string,
  upload = false,
): Storage {
  if (device === "cpu") {
    let data: TypedArray;
    try {
      data = allocArray(dtype, n);
    } catch (e) {
      throw new Error(
        `cannot allocate ${what} on cpu (${n * itemSize(dtype)} bytes): ${(e as Error).message}`,
      );
    }
    return new Storage("cpu", dtype, n, data, null);
  }
  if (dtype === "f64") throw new Error(`${what}: dtype f64 lives on the cpu backend only (WGSL has no f64)`);
  const ctx = gpu();
  if (dtype === "f16" && !ctx.hasF16) {
    throw new Error(`${what}: dtype f16 needs the adapter feature shader-f16, which this adapter lacks`);
  }
  return new Storage("webgpu", dtype, n, null, ctx.alloc(n * itemSize(dtype), what, upload));
}

// ---------------------------------------------------------------------------------------------------------
// tidy: scopes that dispose the intermediates of a block

const scopes: Set<Tensor>[] = [];

function track(t: Tensor): void {
  scopes[scopes.length - 1]?.add(t);
}

function collect(value: unknown, into: Set<Tensor>, depth = 0): void {
  if (depth > 6 || value === null || typeof value !== "object") return;
  if (value instanceof Tensor) {
    into.add(value);
    return;
  }
  if (Array.isArray(value)) { for (const v of value) collect(v, into, depth + 1); }
  else if (value instanceof Map) { for (const v of value.values()) collect(v, into, depth + 1); }
  else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, into, depth + 1);
  }
}

function closeScope(result: unknown): void {
  const scope = scopes.pop()!;
  const kept = new Set<Tensor>();
  collect(result, kept);
  for (const t of scope) if (!kept.has(t)) t.dispose();
  for (const t of kept) if (scope.has(t)) track(t); // returned tensors belong to the enclosing scope
}

/**
 * Runs `fn` and disposes every tensor created inside it except those it returns (in an array, object or
 * Map) or marks with {@link keep}. Works with async functions too, as long as no other tensor-creating code
 * runs concurrently with the awaited block.
 *
 * @example
 * ```ts
 * import { memory, randn, tidy } from "seqlab";
 * const before = memory("cpu").bytesInUse;
 * const y = tidy(() => randn([64, 64], { device: "cpu" }).matmul(randn([64, 64], { device: "cpu" })).relu());
 * y.dispose();
 * console.log(memory("cpu").bytesInUse === before); // true
 * ```
 */
export function tidy<T>(fn: () => T): T {
  scopes.push(new Set());
  let result: T;
  try {
    result = fn();
  } catch (e) {
    closeScope(undefined);
    throw e;
  }
  if (result instanceof Promise) {
    return result.then(
      (r) => (closeScope(r), r),
      (e) => {
        closeScope(undefined);
        throw e;
      },
    ) as T;
  }
  closeScope(result);
  return result;
}

/**
 * Exempts tensors from the enclosing {@link tidy} scopes; returns its argument.
 *
 * @example
 * ```ts
 * import { keep, ones, type Tensor, tidy } from "seqlab";
 * const saved: Tensor[] = [];
 * tidy(() => {
 *   saved.push(keep(ones([4], { device: "cpu" }))); // survives the scope
 *   ones([4], { device: "cpu" }); // freed when tidy returns
 * });
 * saved[0].dispose();
 * ```
 */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

// ---------------------------------------------------------------------------------------------------------
// the op table: declared in runtime/tensor_ops.ts, filled by the op modules

export { ops, registerOps, type TensorOps } from "./tensor_ops.ts";

/** Autograd entry points, registered by runtime/autograd.ts (kept apart to avoid an import cycle). */
export const hooks: {
  backward?: (root: Tensor, grad?: Tensor) => void;
  record?: (
    name: string,
    out: Tensor,
    inputs: readonly Tensor[],
    save: readonly Tensor[],
    backward: (grad: Tensor, saved: Tensor[]) => (Tensor | null | undefined)[],
  ) => Tensor;
} = {};

/** Records a view op for autograd (a no-op until autograd is loaded). */
function recordView(name: string, out: Tensor, x: Tensor, backward: (g: Tensor) => Tensor): Tensor {
  return hooks.record ? hooks.record(name, out, [x], [], (g) => [backward(g)]) : out;
}

/** Options accepted by creation functions. */
export interface CreateOptions {
  /** Element type (default f32). */
  dtype?: DType;
  /** Device (default {@link getDevice}). */
  device?: DeviceName;
  /** A name shown in summaries and errors. */
  name?: string;
}

/** One dimension's selection for {@link Tensor.slice}: an index (drops the dim), a range, or all (null). */
export type SliceSpec = number | null | undefined | [
  start?: number | null,
  end?: number | null,
  step?: number,
];

/** A scalar or tensor operand. */
export type Operand = Tensor | number;

let nextId = 1;

/**
 * An n-dimensional array on a device. Create one with `tensor`, `zeros`, `randn`...; read it with
 * `await t.toArray()`. Views (reshape, permute, slice, expand) share storage; `dispose()` frees it when the
 * last view goes.
 */
export class Tensor {
  /** Dimensions. */
  readonly shape: readonly number[];
  /** Element strides per dimension (0 for broadcast dimensions). */
  readonly strides: readonly number[];
  /** Element offset of the first element in storage. */
  readonly offset: number;
  /** Unique id (for debugging and autograd). */
  readonly id: number = nextId++;
  /** Optional name shown in summaries and errors. */
  name: string | undefined;
  /** Whether gradients flow to this tensor (set on leaves, e.g. via `param`; propagated by ops). */
  requiresGrad = false;
  /** The accumulated gradient of a leaf after `backward()`. */
  grad: Tensor | null = null;
  /** The op that produced this tensor, while its graph is alive (null for leaves). */
  gradFn: import("./autograd.ts").GradNode | null = null;
  #disposed = false;

  /** Wraps storage as a view. Takes ownership of one storage reference. Internal: use creation functions. */
  constructor(
    readonly storage: Storage,
    shape: Shape,
    strides?: Shape,
    offset = 0,
    name?: string,
  ) {
    this.shape = Object.freeze([...shape]);
    this.strides = Object.freeze(strides ? [...strides] : contiguousStrides(shape));
    this.offset = offset;
    this.name = name;
    track(this);
  }

  /** Element type. */
  get dtype(): DType {
    return this.storage.dtype;
  }

  /** The device holding the elements. */
  get device(): DeviceName {
    return this.storage.device;
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** Whether the elements are laid out row-major from `offset` with no gaps. */
  get isContiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] === 1) continue;
      if (this.strides[i] !== expect) return false;
      expect *= this.shape[i];
    }
    return true;
  }

  /** `name [shape] dtype device`, for error messages. */
  describe(): string {
    return `${this.name ? `tensor "${this.name}" ` : "tensor "}${
      fmt(this.shape)
    } ${this.dtype} on ${this.device}`;
  }

  /** Throws if disposed; names the op. */
  check(op: string): this {
    if (this.#disposed) throw new Error(`${op}: ${this.describe()} was disposed`);
    return this;
  }

  /** Frees this view's reference to storage (idempotent). Also available as `using t = ...`. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.storage.release();
    this.gradFn?.drop();
  }

  /**
   * Backpropagates from this one-element loss (or with an explicit `grad` of the same shape) into the
   * `.grad` of every leaf with `requiresGrad`, then frees the graph.
   *
   * @example
   * ```ts
   * import { param, tensor } from "seqlab";
   * const x = param(tensor([1, 2, 3]));
   * x.mul(x).sum().backward();
   * console.log(await x.grad!.toArray()); // [2, 4, 6]
   * ```
   */
  backward(grad?: Tensor): void {
    if (!hooks.backward) throw new Error("backward: autograd is not loaded (import seqlab's mod.ts)");
    hooks.backward(this, grad);
  }

  /**
   * The same values without gradient history (a view sharing storage).
   *
   * @example
   * ```ts
   * import { param, ones } from "seqlab";
   * console.log(param(ones([2])).mul(2).detach().requiresGrad); // false
   * ```
   */
  detach(): Tensor {
    this.check("detach");
    return this.view(this.shape, this.strides, this.offset);
  }

  /** Clears `.grad` (disposing it). */
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  /** Same as `dispose()`, for `using t = ...` blocks. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A new view over the same storage. */
  view(shape: Shape, strides: Shape, offset: number): Tensor {
    this.storage.refs++;
    return new Tensor(this.storage, shape, strides, offset, this.name);
  }

  // ---- readback -------------------------------------------------------------------------------------------

  /**
   * The elements in row-major order as a fresh typed array (waits for the device).
   *
   * @example
   * ```ts
   * import { tensor } from "seqlab";
   * console.log(await tensor([1, 2, 3]).toArray()); // Float32Array [1, 2, 3]
   * ```
   */
  async toArray(): Promise<TypedArray> {
    this.check("toArray");
    if (!this.isContiguous) {
      const c = ops.contiguous(this);
      try {
        return await c.toArray();
      } finally {
        c.dispose();
      }
    }
    const n = this.size;
    if (this.storage.data) return this.storage.data.slice(this.offset, this.offset + n) as TypedArray;
    const size = itemSize(this.dtype);
    const bytes = await gpu().read(this.storage.buffer!, this.offset * size, n * size);
    const out = allocArray(this.dtype, n);
    new Uint8Array(out.buffer).set(new Uint8Array(bytes));
    return out;
  }

  /**
   * The single element of a one-element tensor.
   *
   * @example
   * ```ts
   * import { tensor } from "seqlab";
   * console.log(await tensor([1, 2, 3]).sum().item()); // 6
   * ```
   */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item: ${this.describe()} has ${this.size} elements, not 1`);
    return (await this.toArray())[0];
  }

  /** The elements as nested JavaScript arrays. */
  async toNested(): Promise<unknown> {
    const data = await this.toArray();
    const build = (dim: number, off: number): unknown => {
      if (dim === this.shape.length) return data[off];
      const step = numel(this.shape.slice(dim + 1));
      return Array.from({ length: this.shape[dim] }, (_, i) => build(dim + 1, off + i * step));
    };
    return build(0, 0);
  }

  /**
   * A copy on another device (a new tensor; this one is untouched).
   *
   * @example
   * ```ts
   * import { tensor } from "seqlab";
   * const c = await tensor([1, 2]).to("cpu");
   * console.log(c.device); // "cpu"
   * ```
   */
  async to(device: DeviceName): Promise<Tensor> {
    this.check("to");
    if (device === this.device) return ops.contiguous(this);
    const data = await this.toArray();
    return ops.fromArray(data, this.shape, this.dtype, device, this.name);
  }

  // ---- display --------------------------------------------------------------------------------------------

  /** A one-line summary; values are shown for cpu tensors (webgpu values need `await t.format()`). */
  toString(): string {
    const head = `Tensor(${fmt(this.shape)}, ${this.dtype}, ${this.device}${
      this.name ? `, "${this.name}"` : ""
    })`;
    if (this.#disposed) return `${head} <disposed>`;
    if (this.device === "cpu") {
      const c = this.isContiguous ? null : ops.contiguous(this);
      const src = c ?? this;
      const data = src.storage.data!.subarray(src.offset, src.offset + src.size) as TypedArray;
      const s = `${head}\n${formatValues(data, this.shape, this.dtype)}`;
      c?.dispose();
      return s;
    }
    return head;
  }

  /**
   * A readable summary with values (reads the device).
   *
   * @example
   * ```ts
   * import { arange } from "seqlab";
   * console.log(await arange(6).reshape([2, 3]).format());
   * ```
   */
  async format(): Promise<string> {
    const head = `Tensor(${fmt(this.shape)}, ${this.dtype}, ${this.device}${
      this.name ? `, "${this.name}"` : ""
    })`;
    if (this.#disposed) return `${head} <disposed>`;
    return `${head}\n${formatValues(await this.toArray(), this.shape, this.dtype)}`;
  }

  /** Deno's console.log hook: the same summary as `toString()`. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** Node's console.log hook: the same summary as `toString()`. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /** Jupyter display protocol (the symbol Deno's kernel uses): a summary table with values. */
  async [Symbol.for("Jupyter.display")](): Promise<Record<string, string>> {
    const text = await this.format();
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const html = `<table><tr><th>shape</th><th>dtype</th><th>device</th>${
      this.name ? "<th>name</th>" : ""
    }</tr><tr><td>${fmt(this.shape)}</td><td>${this.dtype}</td><td>${this.device}</td>${
      this.name ? `<td>${esc(this.name)}</td>` : ""
    }</tr></table><pre>${esc(text.slice(text.indexOf("\n") + 1))}</pre>`;
    return { "text/plain": text, "text/html": html };
  }

  // ---- views ----------------------------------------------------------------------------------------------

  /**
   * The same elements with a new shape (one entry may be -1). A view when the layout allows, else a copy.
   *
   * @example
   * ```ts
   * import { arange } from "seqlab";
   * console.log(arange(6).reshape([2, -1]).shape); // [2, 3]
   * ```
   */
  reshape(shape: Shape): Tensor {
    this.check("reshape");
    const n = this.size;
    const out = [...shape];
    const neg = out.indexOf(-1);
    if (out.some((d, i) => !Number.isInteger(d) || d < -1 || (d === -1 && i !== neg))) {
      throw new Error(`reshape: invalid shape ${fmt(shape)} for ${this.describe()}`);
    }
    if (neg >= 0) {
      const rest = numel(out.filter((_, i) => i !== neg));
      if (rest === 0 || n % rest !== 0) {
        throw new Error(`reshape: cannot infer -1 in ${fmt(shape)} for ${this.describe()} (${n} elements)`);
      }
      out[neg] = n / rest;
    }
    if (numel(out) !== n) {
      throw new Error(
        `reshape: cannot reshape ${this.describe()} (${n} elements) to ${fmt(shape)} (${numel(out)})`,
      );
    }
    let r: Tensor;
    if (this.isContiguous) r = this.view(out, contiguousStrides(out), this.offset);
    else {
      const c = ops.contiguous(this);
      r = c.view(out, contiguousStrides(out), 0);
      c.dispose();
    }
    const shape0 = this.shape;
    return recordView("reshape", r, this, (g) => g.reshape(shape0));
  }

  /**
   * Reorders dimensions (a view).
   *
   * @example
   * ```ts
   * import { zeros } from "seqlab";
   * console.log(zeros([2, 3, 4]).permute([2, 0, 1]).shape); // [4, 2, 3]
   * ```
   */
  permute(axes: readonly number[]): Tensor {
    this.check("permute");
    const r = this.rank;
    const norm = axes.map((a) => normAxis("permute", a, r));
    if (norm.length !== r || new Set(norm).size !== r) {
      throw new Error(
        `permute: axes ${fmt(axes)} are not a permutation of the ${r} dims of ${this.describe()}`,
      );
    }
    const inverse = norm.map((_, i) => norm.indexOf(i));
    const v = this.view(norm.map((a) => this.shape[a]), norm.map((a) => this.strides[a]), this.offset);
    return recordView("permute", v, this, (g) => g.permute(inverse));
  }

  /**
   * Swaps two dimensions (default: the last two), a view.
   *
   * @example
   * ```ts
   * import { zeros } from "seqlab";
   * console.log(zeros([2, 3]).transpose().shape); // [3, 2]
   * ```
   */
  transpose(a = -2, b = -1): Tensor {
    const r = this.rank;
    const axes = [...Array(r).keys()];
    const i = normAxis("transpose", a, r), j = normAxis("transpose", b, r);
    [axes[i], axes[j]] = [axes[j], axes[i]];
    return this.permute(axes);
  }

  /**
   * Selects per dimension: a number picks one index (dropping the dim), `[start, end, step]` a range
   * (negative indices count from the end, end exclusive, positive step), `null` everything. A view.
   *
   * @example
   * ```ts
   * import { arange } from "seqlab";
   * const t = arange(12).reshape([3, 4]);
   * console.log(t.slice([[1, 3], [0, 4, 2]]).shape); // [2, 2]
   * console.log(t.slice([-1]).shape); // [4]
   * ```
   */
  slice(specs: readonly SliceSpec[]): Tensor {
    this.check("slice");
    if (specs.length > this.rank) {
      throw new Error(`slice: ${specs.length} selections for ${this.describe()} of rank ${this.rank}`);
    }
    const shape: number[] = [], strides: number[] = [];
    const region: [number, number][] = []; // [start, end) per dimension of this tensor
    let offset = this.offset;
    for (let d = 0; d < this.rank; d++) {
      const spec = specs[d], n = this.shape[d], st = this.strides[d];
      if (typeof spec === "number") {
        const i = spec < 0 ? spec + n : spec;
        if (!Number.isInteger(spec) || i < 0 || i >= n) {
          throw new Error(
            `slice: index ${spec} is out of range for dimension ${d} (size ${n}) of ${this.describe()}`,
          );
        }
        offset += i * st;
        region.push([i, i + 1]);
        continue;
      }
      if (spec === null || spec === undefined) {
        shape.push(n);
        strides.push(st);
        region.push([0, n]);
        continue;
      }
      const [s0, e0, step = 1] = spec;
      if (!Number.isInteger(step) || step <= 0) {
        throw new Error(`slice: step ${step} for dimension ${d} must be a positive integer`);
      }
      const clamp = (v: number | null | undefined, dflt: number) => {
        if (v === null || v === undefined) return dflt;
        if (!Number.isInteger(v)) throw new Error(`slice: bound ${v} for dimension ${d} is not an integer`);
        return Math.min(Math.max(v < 0 ? v + n : v, 0), n);
      };
      const s = clamp(s0, 0), e = clamp(e0, n);
      const len = Math.max(0, Math.ceil((e - s) / step));
      if (len > 0) offset += s * st;
      shape.push(len);
      strides.push(st * step);
      region.push(len > 0 ? [s, s + (len - 1) * step + 1] : [s, s]);
    }
    const r = this.view(shape, strides, offset);
    const shape0 = this.shape, dtype = this.dtype, device = this.device;
    const out = recordView("slice", r, this, (g) => {
      const z = ops.zeros(shape0, { dtype, device });
      const dst = z.slice(specs);
      ops.copyInto(dst, g);
      dst.dispose();
      return z;
    });
    // backward writes into one gradient shared by every slice of this tensor (autograd.ts)
    if (out.gradFn && out.gradFn.inputs[0] === this) out.gradFn.slice = { specs: [...specs], region };
    return out;
  }

  /**
   * Broadcasts size-1 dimensions to a larger shape without copying (-1 keeps a size; new leading dims allowed).
   *
   * @example
   * ```ts
   * import { tensor } from "seqlab";
   * console.log(tensor([1, 2, 3]).expand([4, 3]).shape); // [4, 3]
   * ```
   */
  expand(shape: Shape): Tensor {
    this.check("expand");
    const lead = shape.length - this.rank;
    if (lead < 0) throw new Error(`expand: ${fmt(shape)} has fewer dims than ${this.describe()}`);
    const outShape: number[] = [], strides: number[] = [];
    for (let i = 0; i < shape.length; i++) {
      const src = i - lead;
      const have = src >= 0 ? this.shape[src] : 1;
      const want = shape[i] === -1 && src >= 0 ? have : shape[i];
      if (!Number.isInteger(want) || want < 0) {
        throw new Error(`expand: invalid size ${shape[i]} in ${fmt(shape)}`);
      }
      if (have !== want && have !== 1) {
        throw new Error(
          `expand: cannot expand ${this.describe()} to ${fmt(shape)}: dimension ${i} is ${have}, not 1`,
        );
      }
      outShape.push(want);
      strides.push(src >= 0 && have === want ? this.strides[src] : 0);
    }
    const shape0 = this.shape;
    return recordView("expand", this.view(outShape, strides, this.offset), this, (g) => ops.sumTo(g, shape0));
  }

  /**
   * Inserts a size-1 dimension at `axis` (a view).
   *
   * @example
   * ```ts
   * import { zeros } from "seqlab";
   * console.log(zeros([3]).unsqueeze(0).shape); // [1, 3]
   * ```
   */
  unsqueeze(axis: number): Tensor {
    const a = normAxis("unsqueeze", axis, this.rank + 1);
    const shape = [...this.shape], strides = [...this.strides];
    shape.splice(a, 0, 1);
    strides.splice(a, 0, 0);
    const shape0 = this.shape;
    return recordView("unsqueeze", this.view(shape, strides, this.offset), this, (g) => g.reshape(shape0));
  }

  /**
   * Removes size-1 dimensions (all, or the one at `axis`), a view.
   *
   * @example
   * ```ts
   * import { zeros } from "seqlab";
   * console.log(zeros([1, 3, 1]).squeeze().shape); // [3]
   * ```
   */
  squeeze(axis?: number): Tensor {
    const keepDim = (d: number, i: number) =>
      axis === undefined ? d !== 1 : i !== normAxis("squeeze", axis, this.rank) || d !== 1;
    if (axis !== undefined && this.shape[normAxis("squeeze", axis, this.rank)] !== 1) {
      throw new Error(`squeeze: dimension ${axis} of ${this.describe()} is not 1`);
    }
    const r = this.view(
      this.shape.filter(keepDim),
      this.strides.filter((_, i) => keepDim(this.shape[i], i)),
      this.offset,
    );
    const shape0 = this.shape;
    return recordView("squeeze", r, this, (g) => g.reshape(shape0));
  }

  /** Flattens to one dimension. */
  flatten(): Tensor {
    return this.reshape([-1]);
  }

  // ---- op methods (see ops/core for docs and examples) ----------------------------------------------------

  /** A contiguous copy (or a new view if already contiguous). */
  contiguous(): Tensor {
    return ops.contiguous(this);
  }
  /** Converts to another dtype. */
  cast(dtype: DType): Tensor {
    return ops.cast(this, dtype);
  }
  /** Elementwise `this + b` with broadcasting. */
  add(b: Operand): Tensor {
    return ops.add(this, b);
  }
  /** Elementwise `this - b` with broadcasting. */
  sub(b: Operand): Tensor {
    return ops.sub(this, b);
  }
  /** Elementwise `this * b` with broadcasting. */
  mul(b: Operand): Tensor {
    return ops.mul(this, b);
  }
  /** Elementwise `this / b` (true division) with broadcasting. */
  div(b: Operand): Tensor {
    return ops.div(this, b);
  }
  /** Elementwise `this ** b` with broadcasting. */
  pow(b: Operand): Tensor {
    return ops.pow(this, b);
  }
  /** Elementwise maximum (NaN propagates). */
  maximum(b: Operand): Tensor {
    return ops.maximum(this, b);
  }
  /** Elementwise minimum (NaN propagates). */
  minimum(b: Operand): Tensor {
    return ops.minimum(this, b);
  }
  /** `this == b` as u32 0/1. */
  eq(b: Operand): Tensor {
    return ops.eq(this, b);
  }
  /** `this != b` as u32 0/1. */
  ne(b: Operand): Tensor {
    return ops.ne(this, b);
  }
  /** `this < b` as u32 0/1. */
  lt(b: Operand): Tensor {
    return ops.lt(this, b);
  }
  /** `this <= b` as u32 0/1. */
  le(b: Operand): Tensor {
    return ops.le(this, b);
  }
  /** `this > b` as u32 0/1. */
  gt(b: Operand): Tensor {
    return ops.gt(this, b);
  }
  /** `this >= b` as u32 0/1. */
  ge(b: Operand): Tensor {
    return ops.ge(this, b);
  }
  /** Elementwise negation. */
  neg(): Tensor {
    return ops.neg(this);
  }
  /** Elementwise absolute value. */
  abs(): Tensor {
    return ops.abs(this);
  }
  /** Elementwise e^x. */
  exp(): Tensor {
    return ops.exp(this);
  }
  /** Elementwise natural log. */
  log(): Tensor {
    return ops.log(this);
  }
  /** Elementwise square root. */
  sqrt(): Tensor {
    return ops.sqrt(this);
  }
  /** Elementwise 1/sqrt(x). */
  rsqrt(): Tensor {
    return ops.rsqrt(this);
  }
  /** Elementwise max(x, 0). */
  relu(): Tensor {
    return ops.relu(this);
  }
  /** Elementwise GELU (erf form). */
  gelu(): Tensor {
    return ops.gelu(this);
  }
  /** Elementwise x * sigmoid(x). */
  silu(): Tensor {
    return ops.silu(this);
  }
  /** Elementwise 1 / (1 + e^-x). */
  sigmoid(): Tensor {
    return ops.sigmoid(this);
  }
  /** Elementwise tanh. */
  tanh(): Tensor {
    return ops.tanh(this);
  }
  /** Elementwise log(1 + e^x). */
  softplus(): Tensor {
    return ops.softplus(this);
  }
  /** Sum over `axis` (all when omitted). */
  sum(axis?: number | readonly number[] | null, keepdims = false): Tensor {
    return ops.sum(this, axis, keepdims);
  }
  /** Mean over `axis` (all when omitted). */
  mean(axis?: number | readonly number[] | null, keepdims = false): Tensor {
    return ops.mean(this, axis, keepdims);
  }
  /** Maximum over `axis` (all when omitted). */
  max(axis?: number | readonly number[] | null, keepdims = false): Tensor {
    return ops.max(this, axis, keepdims);
  }
  /** Minimum over `axis` (all when omitted). */
  min(axis?: number | readonly number[] | null, keepdims = false): Tensor {
    return ops.min(this, axis, keepdims);
  }
  /** Index of the maximum along `axis` (of the flattened tensor when omitted), i32. */
  argmax(axis?: number | null, keepdims = false): Tensor {
    return ops.argmax(this, axis, keepdims);
  }
  /** Inclusive cumulative sum along `axis` (default last). */
  cumsum(axis = -1): Tensor {
    return ops.cumsum(this, axis);
  }
  /** Batched matrix product with broadcasting batch dims. */
  matmul(b: Tensor): Tensor {
    return ops.matmul(this, b);
  }
  /** Softmax along `axis` (default last). */
  softmax(axis = -1): Tensor {
    return ops.softmax(this, axis);
  }
  /** log(sum(exp(x))) along `axis`, computed stably. */
  logSumExp(axis = -1, keepdims = false): Tensor {
    return ops.logSumExp(this, axis, keepdims);
  }
  /** Layer normalisation over the last dimension. */
  layerNorm(weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
    return ops.layerNorm(this, weight, bias, eps);
  }
  /** RMS normalisation over the last dimension. */
  rmsNorm(weight?: Tensor | null, eps = 1e-6): Tensor {
    return ops.rmsNorm(this, weight, eps);
  }
  /** Selects entries along `axis` by integer indices (embedding lookup for axis 0). */
  gather(indices: Tensor, axis = 0): Tensor {
    return ops.gather(this, indices, axis);
  }
}

// ---------------------------------------------------------------------------------------------------------
// value formatting (numpy-like, with edge items)

function formatNumber(v: number, dtype: DType): string {
  if (!isFloat(dtype)) return String(v);
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-4)) return v.toExponential(4);
  return String(Number(v.toPrecision(6)));
}

/** Formats row-major values of `shape` with numpy-style brackets and `...` past 6 items per dim. */
export function formatValues(data: ArrayLike<number>, shape: Shape, dtype: DType, edge = 3): string {
  if (shape.length === 0) return formatNumber(data[0], dtype);
  if (numel(shape) === 0) return "[]";
  const strides = contiguousStrides(shape);
  const rec = (dim: number, off: number, indent: string): string => {
    const n = shape[dim];
    const idx = n > 2 * edge
      ? [...Array(edge).keys(), -1, ...Array.from({ length: edge }, (_, i) => n - edge + i)]
      : [...Array(n).keys()];
    if (dim === shape.length - 1) {
      return `[${idx.map((i) => (i < 0 ? "..." : formatNumber(data[off + i], dtype))).join(", ")}]`;
    }
    const inner = idx.map((i) => (i < 0 ? "..." : rec(dim + 1, off + i * strides[dim], indent + " ")));
    return `[${inner.join(`,\n${indent} `)}]`;
  };
  return rec(0, 0, "");
}
