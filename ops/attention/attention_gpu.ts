/**
 * WebGPU plumbing for the attention programs that read textures. `GpuContext.run` binds storage buffers
 * only, so these programs are recorded into their own compute pass and submitted right after the
 * context's batch is flushed: queue order keeps them after every op recorded before and before every op
 * recorded after (one extra submit, no wait). Textures are pooled (fresh memory is ~80x slower to touch
 * than reused memory on the software adapter) and charged to the webgpu ledger while an op holds them.
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import { ledgerAlloc, ledgerFree, ledgerPooled } from "../../runtime/memory.ts";
import { WebGPUError } from "../../runtime/webgpu.ts";
import { type Source, TEX_WIDTH } from "./attention_wgsl.ts";

/** One dispatch of a texture-reading program. */
export interface Step {
  /** Op name for errors. */
  name: string;
  /** Everything the source depends on: the pipeline cache key. */
  key: string;
  /** Generates the WGSL and its binding order (called on a cache miss). */
  source: () => Source;
  /** Resources by binding name. */
  resources: Record<string, GPUBindingResource>;
  /** Uniform words (binding 0). */
  uniforms: Uint32Array;
  workgroups: [number, number, number];
}

interface Pipe {
  pipe: GPUComputePipeline;
  bindings: string[];
}

const pipes = new Map<string, Pipe>();

function pipeline(step: Step): Pipe {
  let p = pipes.get(step.key);
  if (!p) {
    const src = step.source();
    const device = gpu().device;
    const module = device.createShaderModule({ code: src.code, label: step.key });
    p = {
      pipe: device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: step.key,
      }),
      bindings: src.bindings,
    };
    pipes.set(step.key, p);
  }
  return p;
}

/** Number of compiled attention pipelines (for tests). */
export function attentionPipelineCount(): number {
  return pipes.size;
}

let ring: GPUBuffer | null = null;
let deferredError: string | null = null;

/** Throws an error the device reported for an earlier attention pass. */
export function checkDeferred(op: string): void {
  if (deferredError) {
    const msg = deferredError;
    deferredError = null;
    throw new WebGPUError(`${op}: an earlier attention pass failed: ${msg}; its results are invalid`);
  }
}

/** Records `steps` into one compute pass and submits it (after flushing the context's batch). */
export function submitSteps(steps: Step[]): void {
  const ctx = gpu();
  ctx.checkAlive(steps[0]?.name ?? "attention");
  if (steps.length === 0) return;
  const device = ctx.device;
  const bytes = steps.length * 256;
  if (!ring || ring.size < bytes) {
    ring?.destroy();
    ring = device.createBuffer({
      label: "attention uniforms",
      size: Math.ceil(bytes / 4096) * 4096,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }
  const data = new Uint8Array(bytes);
  ctx.flush();
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  const enc = device.createCommandEncoder({ label: "attention" });
  const pass = enc.beginComputePass();
  steps.forEach((s, n) => {
    const p = pipeline(s);
    data.set(new Uint8Array(s.uniforms.buffer, s.uniforms.byteOffset, s.uniforms.byteLength), n * 256);
    const entries: GPUBindGroupEntry[] = [{
      binding: 0,
      resource: { buffer: ring!, offset: n * 256, size: Math.ceil(s.uniforms.byteLength / 16) * 16 },
    }];
    p.bindings.forEach((name, i) => {
      const r = s.resources[name];
      if (!r) throw new Error(`${s.name}: internal: no resource for binding ${name}`);
      entries.push({ binding: i + 1, resource: r });
    });
    pass.setPipeline(p.pipe);
    pass.setBindGroup(0, device.createBindGroup({ layout: p.pipe.getBindGroupLayout(0), entries }));
    pass.dispatchWorkgroups(...s.workgroups);
  });
  pass.end();
  device.queue.writeBuffer(ring, 0, data);
  device.queue.submit([enc.finish()]);
  const validation = device.popErrorScope(), oom = device.popErrorScope();
  const names = [...new Set(steps.map((s) => s.name))].join(", ");
  Promise.all([validation, oom]).then(([v, o]) => {
    const e = o ?? v;
    if (e) deferredError = `[${names}]: ${e.message}`;
  });
  ctx.counters.dispatches += steps.length;
  ctx.counters.submits++;
}

/** A pooled rgba32float texture array holding rows of D4 texels (see attention_wgsl.ts for the layout). */
export interface PackedTexture {
  texture: GPUTexture;
  /** Sampled view (for textureLoad). */
  view: GPUTextureView;
  /** Keys (rows) per texture row. */
  kpr: number;
  bytes: number;
  /** Returns it to the pool (the ledger stops counting it as in use). */
  release(): void;
}

interface Pooled {
  texture: GPUTexture;
  view: GPUTextureView;
  height: number;
  layers: number;
  bytes: number;
}

const texPool: Pooled[] = [];
/** Idle texture bytes kept for reuse; older ones past this are destroyed. */
const POOL_CAP = 768 * 2 ** 20;

/** Texture rows per layer: the device's 2-D limit. */
export function layerRows(): number {
  return gpu().limits.maxTextureDimension2D;
}

/** Keys per texture row for rows of D4 texels. */
export function keysPerRow(D4: number): number {
  return Math.max(1, Math.floor(TEX_WIDTH / D4));
}

/** Bytes of the texture that holds `rows` rows of D4 texels. */
export function textureBytes(rows: number, D4: number): number {
  const { height, layers } = dims(rows, D4);
  return TEX_WIDTH * height * layers * 16;
}

function dims(rows: number, D4: number): { height: number; layers: number } {
  const LR = layerRows();
  const texRows = Math.max(1, Math.ceil(rows / keysPerRow(D4)));
  if (texRows <= LR) {
    return { height: Math.min(LR, 2 ** Math.ceil(Math.log2(Math.max(texRows, 8)))), layers: 1 };
  }
  return { height: LR, layers: Math.ceil(texRows / LR) };
}

/** A texture for `rows` rows of D4 texels, from the pool when one fits; `what` names it in errors. */
export function acquireTexture(rows: number, D4: number, what: string): PackedTexture {
  const ctx = gpu();
  const { height, layers } = dims(rows, D4);
  if (layers > ctx.limits.maxTextureArrayLayers) {
    throw new WebGPUError(
      `${what}: ${rows} rows of ${
        D4 * 4
      } floats need ${layers} texture layers, over the adapter's ${ctx.limits.maxTextureArrayLayers}`,
    );
  }
  let best = -1;
  texPool.forEach((p, i) => {
    if (p.height >= height && p.layers >= layers && (best < 0 || p.bytes < texPool[best].bytes)) best = i;
  });
  let t: Pooled;
  // only a texture of exactly this size is reused: a larger one would overstate the ledger's peak
  if (best >= 0 && texPool[best].height === height && texPool[best].layers === layers) {
    t = texPool.splice(best, 1)[0];
    ledgerPooled("webgpu", -t.bytes);
  } else {
    const texture = ctx.device.createTexture({
      label: `attention ${what}`,
      size: [TEX_WIDTH, height, layers],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
    });
    t = {
      texture,
      view: texture.createView({ dimension: "2d-array" }),
      height,
      layers,
      bytes: TEX_WIDTH * height * layers * 16,
    };
  }
  ledgerAlloc("webgpu", t.bytes);
  let released = false;
  return {
    texture: t.texture,
    view: t.view,
    kpr: keysPerRow(D4),
    bytes: t.bytes,
    release: () => {
      if (released) return;
      released = true;
      ledgerFree("webgpu", t.bytes);
      texPool.push(t);
      ledgerPooled("webgpu", t.bytes);
      let idle = texPool.reduce((a, p) => a + p.bytes, 0);
      while (idle > POOL_CAP && texPool.length > 1) {
        const old = texPool.shift()!;
        idle -= old.bytes;
        ledgerPooled("webgpu", -old.bytes);
        old.texture.destroy(); // deferred by WebGPU until submitted work using it completes
      }
    },
  };
}

/** Destroys the idle pooled attention textures. */
export function emptyAttentionCache(): void {
  for (const p of texPool.splice(0)) {
    ledgerPooled("webgpu", -p.bytes);
    p.texture.destroy();
  }
}
