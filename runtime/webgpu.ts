/**
 * The WebGPU backend's machinery: device acquisition, the buffer pool, the pipeline cache, batched
 * dispatch and readback. Ops describe work as {@link Program} objects; this module records them into one
 * command encoder and submits only when a readback (or a full uniform arena) needs it.
 *
 * Why batching: on the software adapter a submit-and-wait costs ~11 ms, so per-op waits would dominate.
 * Why pooling: fresh buffers cost ~80x reused ones on first touch.
 * @module
 */

import { ledgerAlloc, ledgerFree, ledgerPooled } from "./memory.ts";

/** Work for one compute dispatch. Shapes travel in `uniforms` so one pipeline serves many shapes. */
export interface Program {
  /** Human-readable op name, used in errors. */
  name: string;
  /** Everything the WGSL source depends on (dtypes, variant, workgroup size); the pipeline cache key. */
  key: string;
  /** Produces the WGSL source; called only on a cache miss. */
  source: () => string;
  /** Storage buffers bound read-only at bindings 1..k, in order. */
  inputs: GPUBuffer[];
  /** Storage buffers bound read-write after the inputs. */
  outputs: GPUBuffer[];
  /** Uniform block bound at binding 0 (u32 words; write f32 values through a Float32Array view). */
  uniforms: Uint32Array;
  /** Workgroups to dispatch [x, y, z]; use {@link grid} for flat 1-D work. */
  workgroups: [number, number, number];
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

const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment on every adapter we know
const ARENA_BYTES = 128 * 1024;
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

/** An error raised by the WebGPU backend (device lost, out of memory, validation). */
export class WebGPUError extends Error {
  /** Always "WebGPUError". */
  override name = "WebGPUError";
}

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
  /** Buffers freed while commands that use them are still unsubmitted; they rejoin the pool at flush. */
  private pendingFree: GPUBuffer[] = [];
  private stagingPool = new Map<number, GPUBuffer[]>();
  private pipelines = new Map<string, GPUComputePipeline>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private arena: GPUBuffer;
  private arenaData = new Uint8Array(ARENA_BYTES);
  private arenaUsed = 0;
  private batchOps: string[] = [];
  private scopeOpen = false;
  private errorChecks: Promise<[GPUError | null, GPUError | null, string[]]>[] = [];
  private lostReason: string | null = null;
  /** A small buffer shaders may flag bad input into (e.g. an index out of range); checked at readback. */
  readonly diagnostics: GPUBuffer;
  private diagnosticMessages = new Map<number, (value: number, limit: number) => string>();
  /** Pipeline cache statistics (hits, misses) for tests and reports. */
  readonly cacheStats = { hits: 0, misses: 0 };
  /** Dispatches and submits so far, for tests and benchmarks. */
  readonly counters = { dispatches: 0, submits: 0, readbacks: 0 };
  /** Pool byte cap: freed buffers past this are destroyed rather than kept. */
  poolLimit = 1024 * MIB;

  constructor(readonly device: GPUDevice, adapter: GPUAdapter) {
    this.info = adapter.info;
    this.features = new Set([...device.features] as string[]);
    this.limits = device.limits;
    this.hasF16 = this.features.has("shader-f16");
    this.arena = device.createBuffer({
      size: ARENA_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
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
    // deno-lint-ignore no-explicit-any
    const gpu = (globalThis as any).navigator?.gpu as GPU | undefined;
    if (!gpu) return null;
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) return null;
    const wanted: GPUFeatureName[] = [];
    if (adapter.features.has("shader-f16")) wanted.push("shader-f16");
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: wanted,
      requiredLimits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      },
    });
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
    this.batchOps = [];
    const validation = this.device.popErrorScope();
    const oom = this.device.popErrorScope();
    this.errorChecks.push(Promise.all([validation, oom]).then(([v, o]) => [v, o, ops]));
    this.scopeOpen = false;
  }

  /**
   * Allocates a storage buffer of at least `bytes` (from the pool when it can). `what` describes the tensor
   * for errors: its name, shape and dtype.
   */
  alloc(bytes: number, what: string): GPUBuffer {
    this.checkAlive(`allocating ${what}`);
    if (bytes > this.maxBinding) {
      throw new WebGPUError(
        `cannot allocate ${what}: ${fmtBytes(bytes)} is over the adapter's maxStorageBufferBindingSize ` +
          `(${fmtBytes(this.maxBinding)}); split the tensor or use device "cpu"`,
      );
    }
    const size = Math.min(sizeClass(bytes), Math.max(16, Math.ceil(bytes / 4) * 4, this.maxBinding));
    const free = this.pool.get(size);
    let buf = free?.pop();
    if (buf) {
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
    ledgerAlloc("webgpu", size);
    return buf;
  }

  /** Returns a buffer to the pool (after any recorded commands that use it are submitted). */
  release(buf: GPUBuffer): void {
    ledgerFree("webgpu", buf.size);
    if (this.encoder) this.pendingFree.push(buf);
    else this.toPool(buf);
  }

  private toPool(buf: GPUBuffer): void {
    let pooled = 0;
    for (const list of this.pool.values()) pooled += list.length ? list.length * list[0].size : 0;
    if (pooled + buf.size > this.poolLimit) {
      buf.destroy();
      return;
    }
    let list = this.pool.get(buf.size);
    if (!list) this.pool.set(buf.size, list = []);
    list.push(buf);
    ledgerPooled("webgpu", buf.size);
  }

  /** Destroys every pooled buffer (frees device memory held for reuse). */
  emptyCache(): void {
    for (const list of this.pool.values()) {
      for (const b of list) {
        ledgerPooled("webgpu", -b.size);
        b.destroy();
      }
    }
    this.pool.clear();
    for (const list of this.stagingPool.values()) for (const b of list) b.destroy();
    this.stagingPool.clear();
  }

  /** Writes host data into a buffer. Safe with batching: pooled buffers have no unsubmitted users. */
  write(buf: GPUBuffer, data: ArrayBufferView, byteOffset = 0): void {
    this.checkAlive("upload");
    let bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    if (bytes.byteLength === 0) return;
    this.openScope();
    this.device.queue.writeBuffer(buf, byteOffset, bytes);
  }

  private pipeline(p: Program): GPUComputePipeline {
    const key = `${p.name}|${p.key}`;
    let pipe = this.pipelines.get(key);
    if (pipe) {
      this.cacheStats.hits++;
      return pipe;
    }
    this.cacheStats.misses++;
    const code = p.source();
    const module = this.device.createShaderModule({ code, label: key });
    pipe = this.device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
      label: key,
    });
    this.pipelines.set(key, pipe);
    return pipe;
  }

  /** Number of compiled pipelines held by the cache. */
  get pipelineCount(): number {
    return this.pipelines.size;
  }

  /** Records one dispatch into the current batch. Nothing waits. */
  run(p: Program): void {
    this.checkAlive(p.name);
    const ubytes = Math.max(16, Math.ceil(p.uniforms.byteLength / 16) * 16);
    const slots = Math.ceil(ubytes / UNIFORM_SLOT) * UNIFORM_SLOT;
    if (slots > ARENA_BYTES) {
      throw new WebGPUError(`${p.name}: uniform block of ${ubytes} bytes is too large`);
    }
    if (this.arenaUsed + slots > ARENA_BYTES) this.flush();
    this.openScope();
    const pipe = this.pipeline(p);
    const offset = this.arenaUsed;
    this.arenaData.set(
      new Uint8Array(p.uniforms.buffer, p.uniforms.byteOffset, p.uniforms.byteLength),
      offset,
    );
    this.arenaUsed += slots;
    const entries: GPUBindGroupEntry[] = [{
      binding: 0,
      resource: { buffer: this.arena, offset, size: ubytes },
    }];
    let b = 1;
    for (const buf of p.inputs) entries.push({ binding: b++, resource: { buffer: buf } });
    for (const buf of p.outputs) entries.push({ binding: b++, resource: { buffer: buf } });
    const group = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    if (!this.pass) this.pass = this.encoder.beginComputePass();
    this.pass.setPipeline(pipe);
    this.pass.setBindGroup(0, group);
    this.pass.dispatchWorkgroups(...p.workgroups);
    this.batchOps.push(p.name);
    this.counters.dispatches++;
  }

  /** Records a buffer-to-buffer copy into the current batch. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.checkAlive("copy");
    this.openScope();
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    this.encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /**
   * Registers the message for a diagnostic code. A shader raises it by storing the code, the offending
   * value and the limit into `diagnostics` words 0, 1, 2; the next readback throws with the message.
   */
  diagnostic(code: number, message: (value: number, limit: number) => string): number {
    this.diagnosticMessages.set(code, message);
    return code;
  }

  /** Submits the recorded batch without waiting. */
  flush(): void {
    if (!this.encoder) {
      this.closeScope();
      return;
    }
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.arenaUsed > 0) this.device.queue.writeBuffer(this.arena, 0, this.arenaData, 0, this.arenaUsed);
    this.device.queue.submit([this.encoder.finish()]);
    this.counters.submits++;
    this.encoder = null;
    this.arenaUsed = 0;
    this.closeScope();
    for (const b of this.pendingFree) this.toPool(b);
    this.pendingFree = [];
  }

  private async checkErrors(): Promise<void> {
    const checks = this.errorChecks;
    this.errorChecks = [];
    for (const [v, o, ops] of await Promise.all(checks)) {
      const err = o ?? v;
      if (err) {
        const kind = o ? "out of memory" : "validation error";
        throw new WebGPUError(`webgpu ${kind} in [${ops.slice(0, 8).join(", ")}]: ${err.message}`);
      }
    }
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
   * diagnostics (bad input flagged by a shader throws here rather than returning garbage).
   */
  async read(buf: GPUBuffer, byteOffset: number, bytes: number): Promise<ArrayBuffer> {
    this.checkAlive("readback");
    const start = Math.floor(byteOffset / 4) * 4;
    const end = Math.ceil((byteOffset + bytes) / 4) * 4;
    const span = Math.max(end - start, 0);
    const size = sizeClass(span + 16);
    const staging = this.stagingPool.get(size)?.pop() ??
      this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.copy(this.diagnostics, 0, staging, 0, 16);
    if (span > 0) this.copy(buf, start, staging, 16, span);
    // clear the flags for the next batch
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    this.encoder.clearBuffer(this.diagnostics);
    this.flush();
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
      const text = msg
        ? msg(flags[1] | 0, flags[2])
        : `shader diagnostic ${flags[0]} (${flags[1] | 0}, ${flags[2]})`;
      throw new WebGPUError(`${text}; results computed since the last readback are invalid`);
    }
    return out;
  }
}
