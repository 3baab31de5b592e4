/**
 * A small recorder for compute passes that bind textures, which `GpuContext.run` (storage buffers only)
 * cannot: its own pipeline cache, uniform buffer and command encoder, submitted right after flushing the
 * context's batch so queue order keeps it after every op recorded before and before every op after (the
 * pattern of core matmul's texture path). Also the scratch textures the scan packs its inputs into.
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import { ledgerPooled } from "../../runtime/memory.ts";
import { WebGPUError } from "../../runtime/webgpu.ts";

const pipes = new Map<string, GPUComputePipeline>();
let deferredError: string | null = null;

/** Throws (once) an error an earlier texture submission reported. */
export function checkDeferred(op: string): void {
  if (deferredError) {
    const e = deferredError;
    deferredError = null;
    throw new WebGPUError(`${op}: an earlier scan submission failed: ${e}`);
  }
}

const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

let ubuf: GPUBuffer | null = null;

/** Records dispatches and copies into one command encoder; `submit()` sends it. */
export class PassRecorder {
  private enc: GPUCommandEncoder;
  private pass: GPUComputePassEncoder | null = null;
  private udata: Uint8Array[] = [];
  private uused = 0;
  private pending: { slot: number; bytes: number; entries: (b: GPUBuffer) => GPUBindGroupEntry[] }[] = [];
  private ops: (() => void)[] = [];
  /** Dispatches recorded (for the context's counters). */
  dispatches = 0;

  constructor(readonly label: string) {
    const ctx = gpu();
    ctx.checkAlive(label);
    checkDeferred(label);
    this.enc = ctx.device.createCommandEncoder({ label });
  }

  /** Records a dispatch of the shader `key` (compiled from `source` once) with its resources at 1..k. */
  dispatch(
    key: string,
    source: () => string,
    uniforms: Uint32Array,
    resources: GPUBindingResource[],
    groups: [number, number, number],
  ): void {
    let pipe = pipes.get(key);
    if (!pipe) {
      const device = gpu().device;
      const module = device.createShaderModule({ code: source(), label: key });
      pipe = device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: key,
      });
      pipes.set(key, pipe);
    }
    const bytes = Math.max(16, roundUp(uniforms.byteLength, 16));
    const slot = this.uused;
    this.udata.push(new Uint8Array(uniforms.buffer, uniforms.byteOffset, uniforms.byteLength));
    this.uused += roundUp(bytes, 256);
    const p = pipe;
    // bind groups need the uniform buffer, which is sized at submit: record the dispatch as a closure
    this.ops.push(() => {
      const entries: GPUBindGroupEntry[] = [{
        binding: 0,
        resource: { buffer: ubuf!, offset: slot, size: bytes },
      }];
      resources.forEach((r, i) => entries.push({ binding: i + 1, resource: r }));
      const group = gpu().device.createBindGroup({ layout: p.getBindGroupLayout(0), entries });
      if (!this.pass) this.pass = this.enc.beginComputePass({ label: this.label });
      this.pass.setPipeline(p);
      this.pass.setBindGroup(0, group);
      this.pass.dispatchWorkgroups(...groups);
    });
    this.dispatches++;
  }

  /** Records a buffer-to-texture copy (between passes). */
  copyBufferToTexture(src: GPUTexelCopyBufferInfo, dst: GPUTexelCopyTextureInfo, size: GPUExtent3D): void {
    this.ops.push(() => {
      this.endPass();
      this.enc.copyBufferToTexture(src, dst, size);
    });
  }

  /** Records a texture-to-buffer copy (between passes). */
  copyTextureToBuffer(src: GPUTexelCopyTextureInfo, dst: GPUTexelCopyBufferInfo, size: GPUExtent3D): void {
    this.ops.push(() => {
      this.endPass();
      this.enc.copyTextureToBuffer(src, dst, size);
    });
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  /** Flushes the context's batch, then submits this encoder (no wait). Errors surface on the next call. */
  submit(): void {
    const ctx = gpu();
    const device = ctx.device;
    const need = Math.max(256, this.uused);
    if (!ubuf || ubuf.size < need) {
      ubuf?.destroy(); // deferred by WebGPU until submitted work using it completes
      ubuf = device.createBuffer({
        label: "ssm uniforms",
        size: roundUp(need, 4096),
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      });
    }
    const all = new Uint8Array(need);
    let off = 0;
    for (const d of this.udata) {
      all.set(d, off);
      off += roundUp(Math.max(16, roundUp(d.byteLength, 16)), 256);
    }
    ctx.flush();
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    for (const op of this.ops) op();
    this.endPass();
    device.queue.writeBuffer(ubuf, 0, all);
    device.queue.submit([this.enc.finish()]);
    const validation = device.popErrorScope(), oom = device.popErrorScope();
    Promise.all([validation, oom]).then(([v, o]) => {
      const e = o ?? v;
      if (e) deferredError = `${this.label}: ${e.message}`;
    });
    ctx.counters.dispatches += this.dispatches;
    ctx.counters.submits++;
  }
}

/** A scratch rgba32float 2d-array texture, reused across calls while large enough. */
export interface ScratchTexture {
  tex: GPUTexture;
  view: GPUTextureView;
  w: number;
  h: number;
  layers: number;
  bytes: number;
}

const scratch = new Map<string, ScratchTexture>();

/** The scratch texture of `role`, at least w x h x layers (replaced by a larger one when too small). */
export function scratchTexture(role: string, w: number, h: number, layers: number): ScratchTexture {
  const lim = gpu().limits;
  if (w > lim.maxTextureDimension2D || h > lim.maxTextureDimension2D || layers > lim.maxTextureArrayLayers) {
    throw new WebGPUError(
      `${role}: a ${w} x ${h} x ${layers} texture is over the adapter's limits ` +
        `(${lim.maxTextureDimension2D} x ${lim.maxTextureDimension2D} x ${lim.maxTextureArrayLayers})`,
    );
  }
  const old = scratch.get(role);
  if (old && old.w >= w && old.h >= h && old.layers >= layers) return old;
  const W = Math.max(w, old?.w ?? 0), H = Math.max(h, old?.h ?? 0), Ly = Math.max(layers, old?.layers ?? 0);
  if (old) {
    old.tex.destroy(); // deferred until submitted work that uses it completes
    ledgerPooled("webgpu", -old.bytes);
  }
  const tex = gpu().device.createTexture({
    label: `${role} ${W}x${H}x${Ly}`,
    size: [W, H, Ly],
    format: "rgba32float",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST | GPUTextureUsage.COPY_SRC,
  });
  const s: ScratchTexture = {
    tex,
    view: tex.createView({ dimension: "2d-array" }),
    w: W,
    h: H,
    layers: Ly,
    bytes: W * H * Ly * 16,
  };
  ledgerPooled("webgpu", s.bytes);
  scratch.set(role, s);
  return s;
}

/**
 * Frees the scan's scratch textures (they are otherwise kept for reuse).
 *
 * @example
 * ```ts
 * import { releaseScanTextures } from "seqlab";
 * releaseScanTextures();
 * ```
 */
export function releaseScanTextures(): void {
  for (const s of scratch.values()) {
    s.tex.destroy();
    ledgerPooled("webgpu", -s.bytes);
  }
  scratch.clear();
}
