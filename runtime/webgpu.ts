/**
 * The WebGPU backend's one program model: device acquisition, the buffer pool, the texture pool, the
 * pipeline cache, batched dispatch, copies between buffers and textures, one error channel, readback.
 *
 * Ops describe work as {@link Program} objects (a shader, its bindings of any kind, uniforms, a grid) and
 * copy steps ({@link GpuContext.copyBufferToTexture}, {@link GpuContext.copyTextureToBuffer}); this module
 * records all of them into one command encoder and submits only when a readback needs it. Nothing under
 * ops/ or models/ creates GPU objects or submits.
 *
 * - Why batching: on the software adapter a submit-and-wait costs ~11 ms, so per-op waits would dominate.
 * - Why pooling (buffers and textures): fresh memory costs ~80x reused memory on first touch.
 * - Why cached bind groups and layouts: Deno's WebGPU keeps ~1 KB of native memory per created bind group,
 *   so a training loop that created one per dispatch grew by megabytes per step.
 * - One error channel: every batch runs inside one pair of error scopes; a validation error, an
 *   out-of-memory error or a shader diagnostic from any pass throws at the next readback of any tensor,
 *   naming the op, and every tensor computed by (or later from) the failing batch throws it when read.
 * @module
 */

import { ledgerAlloc, ledgerFree, ledgerPooled } from "./memory.ts";
import { webgpuEntry } from "./platform.ts";

/** How a program binds a storage buffer: read-only, or read-write (its outputs). */
export type BufferAccess = "read" | "read_write";

/**
 * How a program binds a texture: `sampled` (texture_2d_array, read with textureLoad), `read` (a read-only
 * storage texture), `write` (a write-only storage texture) or `read_write`.
 */
export type TextureAccess = "sampled" | "read" | "write" | "read_write";

/** One binding of a program: a storage buffer or a pooled texture (bound as its 2d-array view). */
export type Binding =
  | { buffer: GPUBuffer; access?: BufferAccess }
  | { texture: GpuTexture; access: TextureAccess };

/** WGSL source with the names of its bindings 1..k in order (for programs with named bindings). */
export interface ShaderSource {
  code: string;
  bindings: string[];
}

/**
 * Work for one compute dispatch. Shapes travel in `uniforms` so one pipeline serves many shapes. The
 * uniform block is binding 0; the resources follow from binding 1, given either as `inputs` then
 * `outputs` (storage buffers only) or as `bindings`: an array in binding order, or a record by name whose
 * order the source gives ({@link ShaderSource}).
 */
export interface Program {
  /** Human-readable op name, used in errors. */
  name: string;
  /** Everything the WGSL source depends on (dtypes, variant, workgroup size); the pipeline cache key. */
  key: string;
  /** Produces the WGSL source (and its binding names); called only on a cache miss. */
  source: () => string | ShaderSource;
  /** Storage buffers bound read-only at bindings 1..k, in order. */
  inputs?: GPUBuffer[];
  /** Storage buffers bound read-write after the inputs. */
  outputs?: GPUBuffer[];
  /** Bindings of any kind, from binding 1 (instead of inputs and outputs). */
  bindings?: Binding[] | Record<string, Binding>;
  /** Uniform block bound at binding 0 (u32 words; write f32 values through a Float32Array view). */
  uniforms: Uint32Array;
  /** Workgroups to dispatch [x, y, z]; use {@link grid} for flat 1-D work. */
  workgroups: [number, number, number];
}

/** The size of a pooled texture: width x height texels, `layers` array layers (default 1). */
export interface TextureSpec {
  width: number;
  height: number;
  layers?: number;
  /** Texel format (default rgba32float). */
  format?: "rgba32float" | "r32float" | "r32uint";
}

const TEXEL_BYTES: Record<string, number> = { rgba32float: 16, r32float: 4, r32uint: 4 };

/**
 * A texture from the context's pool, with a 2d-array view. The ledger counts it in `bytesInUse` until
 * `release()`, then in `pooledBytes`. Textures are written only by commands recorded in the batch
 * (dispatches, copies), so a released texture may serve the next op of the same batch.
 */
export interface GpuTexture {
  readonly texture: GPUTexture;
  readonly view: GPUTextureView;
  /** Allocated size (at least the requested one: sizes are rounded to classes). */
  readonly width: number;
  readonly height: number;
  readonly layers: number;
  readonly format: string;
  readonly bytes: number;
  /** Returns it to the pool (idempotent). */
  release(): void;
}

/** Where a copy reads or writes a buffer: byte offset, bytes per texel row, rows per layer. */
export interface BufferLayout {
  buffer: GPUBuffer;
  offset: number;
  bytesPerRow: number;
  rowsPerImage?: number;
}

/** Where a copy reads or writes a texture: its origin texel [x, y, layer]. */
export interface TextureAt {
  texture: GpuTexture;
  origin: [number, number, number];
}

/**
 * The most loop iterations one shader invocation may run in total. Mesa's lavapipe silently ends an
 * invocation's loops after 65535 iterations (measured: a 70000-long cumsum stopped short, leaving zeros),
 * so every op that loops over a length splits longer work across invocations or dispatches.
 */
export const MAX_LOOP = 32768;

/** The largest workgroup count per dimension WebGPU guarantees. */
const MAX_GROUPS = 65535;

/** Workgroups for `threads` flat invocations of `size` each, split over x and y past 65535 groups. */
export function grid(threads: number, size: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(threads / size));
  if (groups <= MAX_GROUPS) return [groups, 1, 1];
  return [MAX_GROUPS, Math.ceil(groups / MAX_GROUPS), 1];
}

/** WGSL prelude line computing a flat invocation index `gid` for a {@link grid} dispatch. */
export function flatId(size: number): string {
  return `@compute @workgroup_size(${size})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let gid = (wid.y * nwg.x + wid.x) * ${size}u + lid.x;`;
}

/** How every shader declares its uniform block (binding 0); see {@link GpuContext.uniformsAsStorage}. */
const UNIFORM_DECL = "@group(0) @binding(0) var<uniform>";

const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment on every adapter we know
const ARENA_BYTES = 128 * 1024;
/** Arenas of the sticky uniform store (512 blocks of 256 bytes each). */
const STICKY_ARENAS = 16;
/** Uniform blocks a shader adds to the sticky store before its hit rate decides whether it stays there. */
const STICKY_TRIAL = 16;
const MIB = 1024 * 1024;

/** Rounds a byte count up to its pool size class: quarter steps between powers of two (<= 25% waste). */
export function sizeClass(bytes: number): number {
  const b = Math.max(16, Math.ceil(bytes / 4) * 4);
  if (b <= 64) return Math.ceil(b / 16) * 16;
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 4;
  return Math.ceil(b / step) * step;
}

function fmtBytes(n: number): string {
  if (n >= MIB) return `${(n / MIB).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Rounds a texture dimension up to its class: multiples of 8 up to 64, then eighth steps of powers of 2. */
export function texDimClass(n: number): number {
  const m = Math.max(1, Math.ceil(n));
  if (m <= 64) return Math.ceil(m / 8) * 8;
  const step = 2 ** Math.floor(Math.log2(m)) / 8;
  return Math.ceil(m / step) * step;
}

/**
 * A string naming a uniform block's bytes exactly: one UTF-16 code unit per two bytes (a byte per unit
 * for an odd length or offset). Measured 0.03 ms per 136 blocks against 0.35 ms for spreading the bytes
 * into String.fromCharCode, and uniformSlot fell from 73 to 9 ms of self time over 43 TransformerLM steps.
 */
function blockKey(src: Uint8Array): string {
  if ((src.byteOffset | src.byteLength) & 1) return String.fromCharCode(...src);
  const w = new Uint16Array(src.buffer, src.byteOffset, src.byteLength >> 1);
  return String.fromCharCode.apply(null, w as unknown as number[]);
}

/** An error raised by the WebGPU backend (device lost, out of memory, validation, bad input). */
export class WebGPUError extends Error {
  /** Always "WebGPUError". */
  override name = "WebGPUError";
}

interface Pipe {
  pipe: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  id: number;
  /** Binding names in order, for programs whose bindings are a record. */
  bindings: string[] | null;
}

interface PooledTexture {
  texture: GPUTexture;
  view: GPUTextureView;
  width: number;
  height: number;
  layers: number;
  format: string;
  bytes: number;
  key: string;
}

/** A batch that failed: resources written in batches from..to (inclusive) carry its error. */
interface Failure {
  from: number;
  to: number;
  error: WebGPUError;
}

/** Bind groups kept for reuse; the oldest go past this. */
const BIND_GROUP_CACHE = 8192;
/** A batch holding this many dispatches is submitted (without waiting) before recording more. */
/** Timestamp queries per batch when profiling (two per dispatch); dispatches past this go untimed. */
const PROFILE_QUERIES = 4096;
const MAX_BATCH_DISPATCHES = 8192;
/** Idle pooled texture bytes kept for reuse; older ones past this are destroyed. */
const TEXTURE_POOL_CAP = 768 * MIB;

/** The WebGPU device context: one per process. */
export class GpuContext {
  /** Adapter description for reports. */
  readonly info: GPUAdapterInfo;
  /** Features of the device (e.g. `shader-f16`). */
  readonly features: Set<string>;
  readonly limits: GPUSupportedLimits;
  /** Whether f16 tensors can live on this device. */
  readonly hasF16: boolean;
  /** Pool of freed buffers by size class. */
  private pool = new Map<number, GPUBuffer[]>();
  private bufPooledBytes = 0;
  /**
   * Buffers freed while commands that use them are still unsubmitted, by size class. They rejoin the pool at
   * flush; before that, a later dispatch of the same batch may take one for its output (the batch's commands
   * run in order, so it writes only after the earlier users read), but an upload into it first submits the
   * batch (queue writes run before the batch they were issued in).
   */
  private batchFree = new Map<number, GPUBuffer[]>();
  /** Buffers taken from {@link batchFree} in the batch being recorded. */
  private reusedInBatch = new Set<GPUBuffer>();
  /**
   * Uniform blocks kept by content in arenas of their own that are never rewritten while the content is
   * cached, so a dispatch repeating an earlier one (a decode step, a training step) binds the same slot and
   * finds its bind group in the cache (measured on lavapipe: a bind group costs ~40 us to create, and a
   * MambaLM decode step of 11 dispatches missed them all). A shader whose uniforms change at most calls (a
   * position, a step counter) uses the batch arena instead.
   */
  private sticky = new Map<string, { arena: number; offset: number }>();
  private stickyArenas: GPUBuffer[] = [];
  private stickyUsed = 0;
  private stickyFull = false;
  /** Per pipeline: uniform blocks found in and added to the sticky store. */
  private stickyStats = new Map<number, { hits: number; misses: number }>();
  /** Objects to destroy once the batch that may use them is submitted. */
  private pendingDestroy: { destroy(): void }[] = [];
  private stagingPool = new Map<number, GPUBuffer[]>();
  private texPool = new Map<string, PooledTexture[]>();
  private texPooledBytes = 0;
  private constants = new Map<string, PooledTexture>();
  private pipelines = new Map<string, Pipe>();
  private bindGroups = new Map<string, GPUBindGroup>();
  private ids = new WeakMap<object, number>();
  private nextId = 1;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  /** Profile ops by name and workgroup count (to tell calls of one op apart). */
  profileDetail = false;
  /** Every timed dispatch of the last profile, in recorded order (see {@link stopProfile}). */
  profileTrace: { op: string; ms: number }[] = [];
  private profiler: {
    set: GPUQuerySet;
    resolve: GPUBuffer;
    names: string[];
    pending: { staging: GPUBuffer; names: string[] }[];
    totals: Map<string, { dispatches: number; ms: number }>;
  } | null = null;
  private arenas: { buf: GPUBuffer; data: Uint8Array<ArrayBuffer> }[] = [];
  private arenaIdx = 0;
  private arenaUsed = 0;
  private batchOps: string[] = [];
  private batchDispatches = 0;
  private scopeOpen = false;
  /** Pending error-scope results: errors, the ops recorded, the batch, whether the scope was one op's. */
  private errorChecks: Promise<[GPUError | null, GPUError | null, string[], number, boolean]>[] = [];
  private lostReason: string | null = null;
  /** The batch being recorded: incremented by each submit. */
  private epoch = 0;
  /** The first batch whose diagnostics the diagnostics buffer holds (it is cleared at each readback). */
  private diagFrom = 0;
  private written = new WeakMap<object, number>();
  private poisoned = new WeakMap<object, WebGPUError>();
  private failures: Failure[] = [];
  private allocStamp = new WeakMap<GPUBuffer, number>();
  private stamp = 0;
  private faults = new Set<string>();
  /** A small buffer shaders may flag bad input into (e.g. an index out of range); checked at readback. */
  readonly diagnostics: GPUBuffer;
  private diagnosticMessages = new Map<number, (value: number, limit: number) => string>();
  /** Pipeline cache statistics (hits, misses) for tests and reports. */
  readonly cacheStats = { hits: 0, misses: 0, bindGroupHits: 0, bindGroupMisses: 0 };
  /** Dispatches, copies, submits and readbacks so far, for tests and benchmarks. */
  readonly counters = { dispatches: 0, copies: 0, submits: 0, readbacks: 0 };
  /** Pool byte cap: freed buffers past this are destroyed rather than kept. */
  poolLimit = 1024 * MIB;
  /** A batch holding this many dispatches is submitted (without waiting) before more are recorded. */
  batchLimit = MAX_BATCH_DISPATCHES;
  /**
   * Whether binding 0 (the uniform block) is bound as a read-only storage buffer instead of a uniform
   * buffer. On Mesa's lavapipe (22.3) a shader whose uniforms steer its loops or addresses gets the
   * values inlined into a new shader variant at each dispatch, and the variant's memory is never freed:
   * measured 25 KB of native memory per dispatch of matmul v3 (1.2 GB over 2,000 MLP steps) and 18% slower
   * dispatches; as a storage binding, ~1 KB and no slowdown. On other adapters uniforms stay uniforms.
   */
  readonly uniformsAsStorage: boolean;

  constructor(readonly device: GPUDevice, adapter: GPUAdapter) {
    this.info = adapter.info;
    this.features = new Set([...device.features] as string[]);
    this.limits = device.limits;
    this.hasF16 = this.features.has("shader-f16");
    this.uniformsAsStorage = /llvmpipe|lavapipe/i.test(`${adapter.info.description} ${adapter.info.device}`);
    this.diagnostics = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    device.lost.then((info) => {
      this.lostReason = `${info.reason ?? "unknown"}: ${info.message || "no message"}`;
    });
    device.addEventListener("uncapturederror", (e) => {
      console.error(`seqlab: uncaptured WebGPU error: ${(e as GPUUncapturedErrorEvent).error.message}`);
    });
  }

  /** Requests an adapter and device; returns null when the host has no WebGPU adapter. */
  static async create(): Promise<GpuContext | null> {
    const gpu = await webgpuEntry();
    if (!gpu) return null;
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) return null;
    const wanted: GPUFeatureName[] = [];
    if (adapter.features.has("shader-f16")) wanted.push("shader-f16");
    if (adapter.features.has("timestamp-query")) wanted.push("timestamp-query");
    const l = adapter.limits;
    const requiredLimits = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxStorageTexturesPerShaderStage: l.maxStorageTexturesPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
    };
    // bun-webgpu 0.1.7 rejects any requiredLimits ("Value must be between 0 and 0, got 8"): then the
    // default limits, which the backend reads back from device.limits like any others
    const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits })
      .catch(() => adapter.requestDevice({ requiredFeatures: wanted }));
    return new GpuContext(device, adapter);
  }

  /** Throws if the device was lost. */
  checkAlive(what: string): void {
    if (this.lostReason !== null) {
      throw new WebGPUError(`${what}: the WebGPU device was lost (${this.lostReason}); restart to continue`);
    }
  }

  /** The largest buffer a shader can bind. */
  get maxBinding(): number {
    return Math.min(this.limits.maxStorageBufferBindingSize, this.limits.maxBufferSize);
  }

  private openScope(): void {
    if (this.scopeOpen) return;
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    this.scopeOpen = true;
  }

  private closeScope(): void {
    if (!this.scopeOpen) return;
    const ops = this.batchOps;
    const epoch = this.epoch;
    this.batchOps = [];
    const validation = this.device.popErrorScope();
    const oom = this.device.popErrorScope();
    this.errorChecks.push(Promise.all([validation, oom]).then(([v, o]) => [v, o, ops, epoch, false]));
    this.scopeOpen = false;
  }

  private idOf(o: object): number {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, id = this.nextId++);
    return id;
  }

  // ---- buffers ------------------------------------------------------------------------------------------

  /**
   * Allocates a storage buffer of at least `bytes` (from the pool when it can). `what` describes the tensor
   * for errors: its name, shape and dtype. `upload`: the buffer will be written from the host (see
   * {@link write}), so it is not taken from buffers the unsubmitted batch may still use.
   */
  alloc(bytes: number, what: string, upload = false): GPUBuffer {
    this.checkAlive(`allocating ${what}`);
    if (bytes > this.maxBinding) {
      throw new WebGPUError(
        `cannot allocate ${what}: ${fmtBytes(bytes)} is over the adapter's maxStorageBufferBindingSize ` +
          `(${fmtBytes(this.maxBinding)}); split the tensor or use device "cpu"`,
      );
    }
    const size = Math.min(sizeClass(bytes), Math.max(16, Math.ceil(bytes / 4) * 4, this.maxBinding));
    // host data is written before the batch runs, so an upload never takes a buffer the batch still uses
    let buf = upload ? undefined : this.batchFree.get(size)?.pop();
    if (buf) this.reusedInBatch.add(buf);
    else if ((buf = this.pool.get(size)?.pop())) {
      this.bufPooledBytes -= size;
      ledgerPooled("webgpu", -size);
    } else {
      this.openScope();
      this.batchOps.push(`alloc ${what}`);
      try {
        buf = this.device.createBuffer({
          size,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        });
      } catch (e) {
        throw new WebGPUError(`cannot allocate ${what} (${fmtBytes(bytes)}): ${(e as Error).message}`);
      }
    }
    // a new life: nothing it held before counts against it
    this.poisoned.delete(buf);
    this.written.delete(buf);
    this.allocStamp.set(buf, this.stamp++);
    ledgerAlloc("webgpu", size);
    return buf;
  }

  /** Returns a buffer to the pool (after any recorded commands that use it are submitted). */
  release(buf: GPUBuffer): void {
    ledgerFree("webgpu", buf.size);
    if (this.encoder || this.scopeOpen) {
      let list = this.batchFree.get(buf.size);
      if (!list) this.batchFree.set(buf.size, list = []);
      list.push(buf);
    } else this.toPool(buf);
  }

  private toPool(buf: GPUBuffer): void {
    if (this.bufPooledBytes + buf.size > this.poolLimit) {
      buf.destroy();
      this.bindGroups.clear();
      return;
    }
    let list = this.pool.get(buf.size);
    if (!list) this.pool.set(buf.size, list = []);
    list.push(buf);
    this.bufPooledBytes += buf.size;
    ledgerPooled("webgpu", buf.size);
  }

  /**
   * Writes host data into a buffer. Safe with batching: a buffer that commands of the unsubmitted batch may
   * still read under an earlier owner gets the batch submitted first.
   */
  write(buf: GPUBuffer, data: ArrayBufferView, byteOffset = 0): void {
    this.checkAlive("upload");
    if (this.reusedInBatch.has(buf)) this.flush();
    let bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    if (bytes.byteLength === 0) return;
    this.openScope();
    this.device.queue.writeBuffer(buf, byteOffset, bytes);
    // host data is right whatever a batch does: a whole upload clears what the buffer carried
    if (byteOffset === 0 && bytes.byteLength >= buf.size) {
      this.poisoned.delete(buf);
      this.written.delete(buf);
    }
  }

  // ---- textures -----------------------------------------------------------------------------------------

  private checkTextureSpec(spec: TextureSpec, what: string): { w: number; h: number; l: number; f: string } {
    const lim = this.limits;
    const l = spec.layers ?? 1, f = spec.format ?? "rgba32float";
    for (const [name, v] of [["width", spec.width], ["height", spec.height], ["layers", l]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new WebGPUError(`${what}: texture ${name} must be >= 1, got ${v}`);
      }
    }
    if (
      spec.width > lim.maxTextureDimension2D || spec.height > lim.maxTextureDimension2D ||
      l > lim.maxTextureArrayLayers
    ) {
      throw new WebGPUError(
        `${what}: a ${spec.width} x ${spec.height} x ${l} texture is over the adapter's limits ` +
          `(${lim.maxTextureDimension2D} x ${lim.maxTextureDimension2D} x ${lim.maxTextureArrayLayers})`,
      );
    }
    const w = Math.min(texDimClass(spec.width), lim.maxTextureDimension2D);
    const h = Math.min(texDimClass(spec.height), lim.maxTextureDimension2D);
    return { w, h, l, f };
  }

  private createTexture(w: number, h: number, l: number, f: string, what: string): PooledTexture {
    this.openScope();
    this.batchOps.push(`texture ${what}`);
    const texture = this.device.createTexture({
      label: what,
      size: [w, h, l],
      format: f as GPUTextureFormat,
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST |
        GPUTextureUsage.COPY_SRC,
    });
    return {
      texture,
      view: texture.createView({ dimension: "2d-array" }),
      width: w,
      height: h,
      layers: l,
      format: f,
      bytes: w * h * l * TEXEL_BYTES[f],
      key: `${f}|${w}|${h}|${l}`,
    };
  }

  /**
   * A texture of at least `spec`'s size from the pool (dimensions rounded to classes, so nearby sizes
   * share textures), charged to the ledger as in use until released. Shaders must index within the
   * region they asked for. `what` names it in errors.
   */
  acquireTexture(spec: TextureSpec, what: string): GpuTexture {
    this.checkAlive(`allocating texture ${what}`);
    const { w, h, l, f } = this.checkTextureSpec(spec, what);
    const key = `${f}|${w}|${h}|${l}`;
    let t = this.texPool.get(key)?.pop();
    if (t) {
      this.texPooledBytes -= t.bytes;
      ledgerPooled("webgpu", -t.bytes);
    } else {
      t = this.createTexture(w, h, l, f, what);
    }
    this.poisoned.delete(t.texture);
    this.written.delete(t.texture);
    ledgerAlloc("webgpu", t.bytes);
    const pooled = t;
    let released = false;
    return {
      texture: t.texture,
      view: t.view,
      width: w,
      height: h,
      layers: l,
      format: f,
      bytes: t.bytes,
      release: () => {
        if (released) return;
        released = true;
        ledgerFree("webgpu", pooled.bytes);
        this.texToPool(pooled);
      },
    };
  }

  private texToPool(t: PooledTexture): void {
    let list = this.texPool.get(t.key);
    if (!list) this.texPool.set(t.key, list = []);
    list.push(t);
    this.texPooledBytes += t.bytes;
    ledgerPooled("webgpu", t.bytes);
    if (this.texPooledBytes <= TEXTURE_POOL_CAP) return;
    // over the cap: drop idle textures, largest first, but never the one just pooled
    const all = [...this.texPool.values()].flat().filter((x) => x !== t).sort((a, b) => b.bytes - a.bytes);
    for (const old of all) {
      if (this.texPooledBytes <= TEXTURE_POOL_CAP) break;
      const l = this.texPool.get(old.key)!;
      l.splice(l.indexOf(old), 1);
      this.texPooledBytes -= old.bytes;
      ledgerPooled("webgpu", -old.bytes);
      this.destroyLater(old.texture);
    }
  }

  /**
   * A constant texture, built once by `fill` (row-major texels of `spec`'s exact size) and kept for
   * reuse under `key` (e.g. an FFT's twiddle table). Counted in `pooledBytes`; `emptyCache()` frees it.
   */
  constantTexture(key: string, spec: TextureSpec, fill: () => Float32Array | Uint32Array): GpuTexture {
    let t = this.constants.get(key);
    if (!t) {
      const { w, h, l, f } = this.checkTextureSpec(spec, key);
      t = this.createTexture(w, h, l, f, key);
      const data = fill();
      const bpr = w * TEXEL_BYTES[f];
      const full = new Uint8Array(bpr * h * l);
      const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      // the caller's rows are spec.width texels wide: place them in the (possibly wider) texture
      const rowBytes = spec.width * TEXEL_BYTES[f];
      const rows = Math.ceil(src.byteLength / rowBytes);
      for (let r = 0; r < rows; r++) {
        const layer = Math.floor(r / spec.height), y = r % spec.height;
        full.set(src.subarray(r * rowBytes, (r + 1) * rowBytes), (layer * h + y) * bpr);
      }
      // written on the queue now: the texture is new, so no recorded command reads its old contents
      this.device.queue.writeTexture({ texture: t.texture }, full, { bytesPerRow: bpr, rowsPerImage: h }, [
        w,
        h,
        l,
      ]);
      this.constants.set(key, t);
      ledgerPooled("webgpu", t.bytes);
    }
    const c = t;
    return { ...c, release: () => {} };
  }

  private destroyLater(o: { destroy(): void }): void {
    this.bindGroups.clear();
    if (this.encoder || this.scopeOpen) this.pendingDestroy.push(o);
    else o.destroy();
  }

  /**
   * Frees device memory held for reuse: pooled buffers and textures, constant textures, staging buffers
   * and cached bind groups. Submits the batch first (its commands may use pooled textures).
   */
  emptyCache(): void {
    this.flush();
    for (const list of this.pool.values()) {
      for (const b of list) {
        ledgerPooled("webgpu", -b.size);
        b.destroy();
      }
    }
    this.pool.clear();
    this.bufPooledBytes = 0;
    for (const list of this.texPool.values()) {
      for (const t of list) {
        ledgerPooled("webgpu", -t.bytes);
        t.texture.destroy();
      }
    }
    this.texPool.clear();
    this.texPooledBytes = 0;
    for (const t of this.constants.values()) {
      ledgerPooled("webgpu", -t.bytes);
      t.texture.destroy();
    }
    this.constants.clear();
    for (const list of this.stagingPool.values()) for (const b of list) b.destroy();
    this.stagingPool.clear();
    this.bindGroups.clear();
  }

  // ---- recording ----------------------------------------------------------------------------------------

  private pipeline(p: Program): Pipe {
    const key = `${p.name}|${p.key}`;
    let pipe = this.pipelines.get(key);
    if (pipe) {
      this.cacheStats.hits++;
      return pipe;
    }
    this.cacheStats.misses++;
    const src = p.source();
    let code = typeof src === "string" ? src : src.code;
    if (this.uniformsAsStorage) code = code.replace(UNIFORM_DECL, "@group(0) @binding(0) var<storage, read>");
    const compute = this.named(p.name, () => {
      const module = this.device.createShaderModule({ code, label: key });
      return this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: key,
      });
    });
    pipe = {
      pipe: compute,
      layout: compute.getBindGroupLayout(0),
      id: this.nextId++,
      bindings: typeof src === "string" ? null : src.bindings,
    };
    this.pipelines.set(key, pipe);
    return pipe;
  }

  /**
   * Runs `make` (an object creation the device validates at once) in an error scope of its own, so that a
   * failure is reported under `op`, the op that recorded it, rather than under the batch.
   */
  private named<T>(op: string, make: () => T): T {
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    const out = make();
    const epoch = this.epoch;
    const validation = this.device.popErrorScope(), oom = this.device.popErrorScope();
    this.errorChecks.push(Promise.all([validation, oom]).then(([v, o]) => [v, o, [op], epoch, true]));
    return out;
  }

  /** Number of compiled pipelines: every shader of every op family. */
  get pipelineCount(): number {
    return this.pipelines.size;
  }

  /** Bound objects: cached bind groups, pooled textures, constant textures (for tests and reports). */
  get cacheSizes(): { bindGroups: number; pooledTextures: number; constantTextures: number } {
    let pooledTextures = 0;
    for (const l of this.texPool.values()) pooledTextures += l.length;
    return { bindGroups: this.bindGroups.size, pooledTextures, constantTextures: this.constants.size };
  }

  private slot(bytes: number, op: string): { arena: number; offset: number } {
    const slots = Math.ceil(bytes / UNIFORM_SLOT) * UNIFORM_SLOT;
    if (slots > ARENA_BYTES) throw new WebGPUError(`${op}: uniform block of ${bytes} bytes is too large`);
    if (this.arenaUsed + slots > ARENA_BYTES) {
      this.arenaIdx++;
      this.arenaUsed = 0;
    }
    if (this.arenaIdx === this.arenas.length) {
      const buf = this.device.createBuffer({
        label: `uniform arena ${this.arenaIdx}`,
        size: ARENA_BYTES,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      this.arenas.push({ buf, data: new Uint8Array(ARENA_BYTES) });
    }
    const offset = this.arenaUsed;
    this.arenaUsed += slots;
    return { arena: this.arenaIdx, offset };
  }

  /**
   * Where `p`'s uniform block is bound from: the sticky slot holding the same bytes (added if there is
   * room), else a slot of the batch arena. `key` names the slot for the bind-group cache.
   */
  private uniformSlot(
    p: Program,
    pipe: Pipe,
    ubytes: number,
  ): { buf: GPUBuffer; offset: number; key: string } {
    const src = new Uint8Array(p.uniforms.buffer, p.uniforms.byteOffset, p.uniforms.byteLength);
    const content = `${pipe.id}:${ubytes}:${blockKey(src)}`;
    let slot = this.sticky.get(content);
    let st = this.stickyStats.get(pipe.id);
    if (!st) this.stickyStats.set(pipe.id, st = { hits: 0, misses: 0 });
    if (slot) st.hits++;
    else st.misses++;
    if (st.hits + st.misses > 4096) st.hits /= 2, st.misses /= 2;
    // a shader whose blocks rarely repeat (a position, a step counter) stays in the batch arena
    const volatile = st.misses > STICKY_TRIAL && st.hits < st.misses;
    if (!slot && !volatile && !this.stickyFull) {
      const slots = Math.ceil(ubytes / UNIFORM_SLOT) * UNIFORM_SLOT;
      let at = this.stickyUsed;
      if ((at % ARENA_BYTES) + slots > ARENA_BYTES) at = Math.ceil(at / ARENA_BYTES) * ARENA_BYTES;
      if (slots > ARENA_BYTES || at + slots > STICKY_ARENAS * ARENA_BYTES) this.stickyFull = true;
      else {
        const arena = Math.floor(at / ARENA_BYTES);
        while (this.stickyArenas.length <= arena) {
          this.stickyArenas.push(this.device.createBuffer({
            label: `uniform store ${this.stickyArenas.length}`,
            size: ARENA_BYTES,
            usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
          }));
        }
        slot = { arena, offset: at % ARENA_BYTES };
        const block = new Uint8Array(ubytes);
        block.set(src);
        this.device.queue.writeBuffer(this.stickyArenas[arena], slot.offset, block);
        this.sticky.set(content, slot);
        this.stickyUsed = at + slots;
      }
    }
    if (slot) {
      return {
        buf: this.stickyArenas[slot.arena],
        offset: slot.offset,
        key: `s${slot.arena}|${slot.offset}`,
      };
    }
    const { arena, offset } = this.slot(ubytes, p.name);
    this.arenas[arena].data.set(src, offset);
    return { buf: this.arenas[arena].buf, offset, key: `${arena}|${offset}` };
  }

  /** The bindings of `p` in order (1..k) with whether each is written. */
  private bindingsOf(p: Program, pipe: Pipe): { res: GPUBindingResource; obj: object; writes: boolean }[] {
    const out: { res: GPUBindingResource; obj: object; writes: boolean }[] = [];
    const add = (b: Binding, name: string) => {
      if (!b) throw new WebGPUError(`${p.name}: internal: no resource for binding ${name}`);
      if ("buffer" in b) {
        out.push({ res: { buffer: b.buffer }, obj: b.buffer, writes: b.access === "read_write" });
      } else {out.push({
          res: b.texture.view,
          obj: b.texture.texture,
          writes: b.access === "write" || b.access === "read_write",
        });}
    };
    for (const buf of p.inputs ?? []) add({ buffer: buf, access: "read" }, "input");
    for (const buf of p.outputs ?? []) add({ buffer: buf, access: "read_write" }, "output");
    const b = p.bindings;
    if (Array.isArray(b)) b.forEach((x, i) => add(x, String(i + 1)));
    else if (b) {
      if (!pipe.bindings) {
        throw new WebGPUError(`${p.name}: named bindings need a source that lists their names`);
      }
      for (const name of pipe.bindings) add(b[name], name);
    }
    return out;
  }

  /** The error a resource carries: its own, or that of a failed batch that wrote it. */
  private poisonOf(o: object): WebGPUError | undefined {
    const p = this.poisoned.get(o);
    if (p) return p;
    if (this.failures.length === 0) return undefined;
    const w = this.written.get(o);
    if (w === undefined) return undefined;
    for (const f of this.failures) if (w >= f.from && w <= f.to) return f.error;
    return undefined;
  }

  /** Marks `writes` as written in this batch, carrying any error of what they were computed from. */
  private taint(reads: object[], writes: object[]): void {
    let err: WebGPUError | undefined;
    for (const r of reads) if (r !== this.diagnostics && (err = this.poisonOf(r))) break;
    for (const w of writes) {
      if (w === this.diagnostics) continue;
      if (!err) err = this.poisonOf(w); // read-write: an output that carried an error still does
      this.written.set(w, this.epoch);
      if (err) this.poisoned.set(w, err);
    }
  }

  private beginRecord(op: string): GPUCommandEncoder {
    this.checkAlive(op);
    if (this.batchDispatches >= this.batchLimit) this.flush();
    this.openScope();
    if (!this.encoder) this.encoder = this.device.createCommandEncoder({ label: "seqlab batch" });
    return this.encoder;
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Records one dispatch into the current batch. Nothing waits. */
  run(p: Program): void {
    this.beginRecord(p.name);
    const pipe = this.pipeline(p);
    const ubytes = Math.max(16, Math.ceil(p.uniforms.byteLength / 16) * 16);
    const u = this.uniformSlot(p, pipe, ubytes);
    const binds = this.bindingsOf(p, pipe);
    let key = `${pipe.id}|${u.key}|${ubytes}`;
    for (const b of binds) key += `|${this.idOf(b.obj)}`;
    let group = this.bindGroups.get(key);
    if (group && !this.faults.has(p.name)) {
      this.bindGroups.delete(key); // re-inserted: the map's order is least recently used first
      this.bindGroups.set(key, group);
      this.cacheStats.bindGroupHits++;
    } else {
      this.cacheStats.bindGroupMisses++;
      const entries: GPUBindGroupEntry[] = [{
        binding: 0,
        resource: { buffer: u.buf, offset: u.offset, size: ubytes },
      }];
      binds.forEach((b, i) => entries.push({ binding: i + 1, resource: b.res }));
      const fault = this.faults.delete(p.name);
      if (fault) entries.pop(); // a test's injected fault: one binding missing
      group = this.named(
        p.name,
        () => this.device.createBindGroup({ layout: pipe.layout, entries, label: p.name }),
      );
      if (this.bindGroups.size >= BIND_GROUP_CACHE) {
        this.bindGroups.delete(this.bindGroups.keys().next().value!);
      }
      if (!fault) this.bindGroups.set(key, group);
    }
    this.taint(binds.map((b) => b.obj), binds.filter((b) => b.writes).map((b) => b.obj));
    const timed = this.profiler !== null && this.profiler.names.length < PROFILE_QUERIES / 2;
    if (timed) {
      this.endPass();
      const i = this.profiler!.names.length;
      this.profiler!.names.push(this.profileDetail ? `${p.name} [${p.workgroups}]` : p.name);
      this.pass = this.encoder!.beginComputePass({
        timestampWrites: {
          querySet: this.profiler!.set,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
    }
    if (!this.pass) this.pass = this.encoder!.beginComputePass();
    this.pass.setPipeline(pipe.pipe);
    this.pass.setBindGroup(0, group);
    this.pass.dispatchWorkgroups(...p.workgroups);
    if (timed) this.endPass();
    this.batchOps.push(p.name);
    this.batchDispatches++;
    this.counters.dispatches++;
  }

  /** Records a buffer-to-buffer copy into the current batch. */
  copy(
    src: GPUBuffer,
    srcOffset: number,
    dst: GPUBuffer,
    dstOffset: number,
    bytes: number,
    op = "copy",
  ): void {
    const enc = this.beginRecord(op);
    this.endPass();
    enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
    this.taint([src], [dst]);
    this.batchOps.push(op);
    this.counters.copies++;
  }

  private checkCopy(op: string, buf: BufferLayout, t: TextureAt, size: [number, number, number]): void {
    const [w, h, d] = size;
    const tb = TEXEL_BYTES[t.texture.format];
    const [x, y, z] = t.origin;
    const bad = (why: string) =>
      new WebGPUError(
        `${op}: copy of ${w} x ${h} x ${d} texels between a buffer and a ${t.texture.width} x ` +
          `${t.texture.height} x ${t.texture.layers} texture ${why}`,
      );
    if (x + w > t.texture.width || y + h > t.texture.height || z + d > t.texture.layers) {
      throw bad(`at [${x}, ${y}, ${z}] reaches past the texture`);
    }
    if (buf.offset % tb !== 0) throw bad(`needs a buffer offset divisible by ${tb}, got ${buf.offset}`);
    if ((h > 1 || d > 1) && buf.bytesPerRow % 256 !== 0) {
      throw bad(`needs bytesPerRow divisible by 256, got ${buf.bytesPerRow}`);
    }
    if (w * tb > buf.bytesPerRow) {
      throw bad(`has rows of ${w * tb} bytes, over bytesPerRow ${buf.bytesPerRow}`);
    }
    const rows = buf.rowsPerImage ?? h;
    const last = buf.offset + ((d - 1) * rows + (h - 1)) * buf.bytesPerRow + w * tb;
    if (w > 0 && h > 0 && d > 0 && last > buf.buffer.size) {
      throw bad(`reads or writes buffer bytes up to ${last}, past its ${buf.buffer.size}`);
    }
  }

  /** Records a copy from a buffer into a pooled texture (packing an operand), in the current batch. */
  copyBufferToTexture(op: string, src: BufferLayout, dst: TextureAt, size: [number, number, number]): void {
    this.checkCopy(op, src, dst, size);
    const enc = this.beginRecord(op);
    this.endPass();
    enc.copyBufferToTexture(
      {
        buffer: src.buffer,
        offset: src.offset,
        bytesPerRow: src.bytesPerRow,
        rowsPerImage: src.rowsPerImage,
      },
      { texture: dst.texture.texture, origin: dst.origin },
      size,
    );
    this.taint([src.buffer], [dst.texture.texture]);
    this.batchOps.push(op);
    this.counters.copies++;
  }

  /** Records a copy from a pooled texture into a buffer (unpacking a result), in the current batch. */
  copyTextureToBuffer(op: string, src: TextureAt, dst: BufferLayout, size: [number, number, number]): void {
    this.checkCopy(op, dst, src, size);
    const enc = this.beginRecord(op);
    this.endPass();
    enc.copyTextureToBuffer(
      { texture: src.texture.texture, origin: src.origin },
      {
        buffer: dst.buffer,
        offset: dst.offset,
        bytesPerRow: dst.bytesPerRow,
        rowsPerImage: dst.rowsPerImage,
      },
      size,
    );
    this.taint([src.texture.texture], [dst.buffer]);
    this.batchOps.push(op);
    this.counters.copies++;
  }

  /**
   * Registers the message for a diagnostic code. A shader raises it by storing the code, the offending
   * value and the limit into `diagnostics` words 0, 1, 2; the next readback throws with the message.
   * The value and limit arrive as u32 words; `signed` says the value is an i32.
   */
  diagnostic(code: number, message: (value: number, limit: number) => string, signed = true): number {
    this.diagnosticMessages.set(code, signed ? (v, l) => message(v | 0, l) : message);
    return code;
  }

  /**
   * Test hook: the next dispatch of op `name` is recorded with one binding missing, a real validation
   * error inside its pass (to check that errors surface at the next readback, naming the op).
   */
  injectFault(name: string): void {
    this.faults.add(name);
  }

  /**
   * Starts timing every dispatch on the device (each in its own pass with timestamp writes; needs the
   * adapter's `timestamp-query` feature, else throws). Separate passes cost a little, so profiled
   * totals run slightly above unprofiled ones. `stopProfile()` returns the per-op times.
   */
  startProfile(): void {
    if (!this.features.has("timestamp-query")) {
      throw new WebGPUError("startProfile: this adapter has no timestamp-query feature");
    }
    if (this.profiler) return;
    this.flush();
    const set = this.device.createQuerySet({ type: "timestamp", count: PROFILE_QUERIES });
    const resolve = this.device.createBuffer({
      size: PROFILE_QUERIES * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.profiler = { set, resolve, names: [], pending: [], totals: new Map() };
  }

  /** Copies this batch's timestamps out (called at flush). */
  private resolveProfile(): void {
    const pr = this.profiler;
    if (!pr || pr.names.length === 0 || !this.encoder) return;
    const n = pr.names.length;
    const staging = this.device.createBuffer({
      size: n * 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.encoder.resolveQuerySet(pr.set, 0, 2 * n, pr.resolve, 0);
    this.encoder.copyBufferToBuffer(pr.resolve, 0, staging, 0, n * 16);
    pr.pending.push({ staging, names: pr.names });
    pr.names = [];
  }

  /**
   * Stops profiling: waits for the device and returns, per op name, the dispatch count and the summed
   * device time in milliseconds (timestamps at the start and end of each dispatch's pass), largest first.
   */
  async stopProfile(): Promise<{ op: string; dispatches: number; ms: number }[]> {
    const pr = this.profiler;
    if (!pr) return [];
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.profileTrace = [];
    for (const { staging, names } of pr.pending) {
      await staging.mapAsync(GPUMapMode.READ);
      const t = new BigUint64Array(staging.getMappedRange());
      names.forEach((name, i) => {
        const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
        this.profileTrace.push({ op: name, ms });
        const e = pr.totals.get(name) ?? { dispatches: 0, ms: 0 };
        e.dispatches++;
        e.ms += ms;
        pr.totals.set(name, e);
      });
      staging.unmap();
      staging.destroy();
    }
    this.profiler = null;
    pr.set.destroy();
    pr.resolve.destroy();
    return [...pr.totals].map(([op, e]) => ({ op, ...e })).sort((a, b) => b.ms - a.ms);
  }

  /** Submits the recorded batch without waiting. */
  flush(): void {
    if (!this.encoder) {
      this.closeScope();
      this.afterSubmit();
      return;
    }
    this.endPass();
    this.resolveProfile();
    for (let i = 0; i <= this.arenaIdx && i < this.arenas.length; i++) {
      const used = i < this.arenaIdx ? ARENA_BYTES : this.arenaUsed;
      if (used > 0) this.device.queue.writeBuffer(this.arenas[i].buf, 0, this.arenas[i].data, 0, used);
    }
    this.device.queue.submit([this.encoder.finish()]);
    this.counters.submits++;
    this.encoder = null;
    this.arenaIdx = 0;
    this.arenaUsed = 0;
    this.batchDispatches = 0;
    this.closeScope();
    this.epoch++;
    this.afterSubmit();
  }

  private afterSubmit(): void {
    // back to the pool latest-allocated first, so the next batch draws the buffers in the order this one
    // did (a training step then reuses the same buffers, and so the same cached bind groups)
    const stamp = (b: GPUBuffer) => this.allocStamp.get(b) ?? 0;
    const freed: GPUBuffer[] = [];
    for (const list of this.batchFree.values()) freed.push(...list);
    this.batchFree.clear();
    this.reusedInBatch.clear();
    freed.sort((a, b) => stamp(b) - stamp(a));
    for (const b of freed) this.toPool(b);
    if (this.stickyFull) {
      // slots are rewritten only now, after the batches that bound them were submitted (queue order)
      this.sticky.clear();
      this.stickyUsed = 0;
      this.stickyFull = false;
      this.bindGroups.clear();
    }
    for (const o of this.pendingDestroy) o.destroy();
    this.pendingDestroy = [];
  }

  /**
   * Records a failure of batches `from` up to the last one submitted (errors are found after a submit, so
   * the batch being recorded now holds nothing computed from the failure, unless it reads a poisoned
   * resource, which taint() carries) and returns its error.
   */
  private fail(from: number, error: WebGPUError): WebGPUError {
    this.failures.push({ from, to: this.epoch - 1, error });
    if (this.failures.length > 32) this.failures.shift();
    return error;
  }

  private async checkErrors(): Promise<void> {
    const checks = await Promise.all(this.errorChecks);
    this.errorChecks = [];
    // an op's own error first: the batch's error that follows from it (an invalid bind group or pipeline
    // makes the whole command buffer invalid) says less
    const failed = checks.filter(([v, o]) => v || o).sort((x, y) => Number(y[4]) - Number(x[4]));
    if (failed.length === 0) return;
    this.bindGroups.clear(); // a cached bind group may be the invalid one
    const [v, o, ops, , own] = failed[0];
    const err = (o ?? v)!;
    const kind = o ? "out of memory" : "validation error";
    const distinct = [...new Set(ops)];
    // a batch's error names the op whose label the message quotes, else the batch's ops
    const named = own
      ? ops[0]
      : distinct.sort((a, b) => b.length - a.length).find((n) => err.message.includes(`'${n}'`));
    const where = named ?? `one of [${distinct.slice(0, 8).join(", ")}${distinct.length > 8 ? ", ..." : ""}]`;
    const from = Math.min(...failed.map((f) => f[3]));
    throw this.fail(
      from,
      new WebGPUError(
        `webgpu ${kind} in ${where}: ${err.message.trim()}; results computed since are invalid`,
      ),
    );
  }

  /** Waits for all submitted work and reports any device error. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.checkAlive("sync");
    await this.checkErrors();
  }

  /**
   * Reads `bytes` from `buf` at `byteOffset`. Submits the batch, waits, checks device errors and shader
   * diagnostics (bad input flagged by a shader throws here rather than returning garbage), and throws the
   * error of a failed batch that computed `buf` (or what it was computed from).
   */
  async read(buf: GPUBuffer, byteOffset: number, bytes: number): Promise<ArrayBuffer> {
    this.checkAlive("readback");
    const start = Math.floor(byteOffset / 4) * 4;
    const end = Math.ceil((byteOffset + bytes) / 4) * 4;
    const span = Math.max(end - start, 0);
    const size = sizeClass(span + 16);
    const staging = this.stagingPool.get(size)?.pop() ??
      this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.beginRecord("readback");
    this.endPass();
    enc.copyBufferToBuffer(this.diagnostics, 0, staging, 0, 16);
    if (span > 0) enc.copyBufferToBuffer(buf, start, staging, 16, span);
    enc.clearBuffer(this.diagnostics); // clear the flags for the next batch
    const diagFrom = this.diagFrom;
    this.flush();
    this.diagFrom = this.epoch;
    this.counters.readbacks++;
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, span + 16);
    } catch (e) {
      this.checkAlive("readback");
      await this.checkErrors();
      throw new WebGPUError(`readback failed: ${(e as Error).message}`);
    }
    const mapped = staging.getMappedRange(0, span + 16);
    const flags = new Uint32Array(mapped, 0, 4).slice();
    const out = mapped.slice(16 + byteOffset - start, 16 + byteOffset - start + bytes);
    staging.unmap();
    let list = this.stagingPool.get(size);
    if (!list) this.stagingPool.set(size, list = []);
    if (list.length < 8) list.push(staging);
    else staging.destroy();
    await this.checkErrors();
    if (flags[0] !== 0) {
      const msg = this.diagnosticMessages.get(flags[0]);
      const text = msg ? msg(flags[1], flags[2]) : `shader diagnostic ${flags[0]} (${flags[1]}, ${flags[2]})`;
      throw this.fail(
        diagFrom,
        new WebGPUError(`${text}; results computed since the last readback are invalid`),
      );
    }
    const err = this.poisonOf(buf);
    if (err) throw new WebGPUError(`this tensor was computed by (or from) a failed pass: ${err.message}`);
    return out;
  }
}
