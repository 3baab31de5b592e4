/**
 * The WebGPU adapter's self-test: before the backend is used, one tiny known computation runs on the raw
 * device (a storage-buffer read, a texture read, integer and float arithmetic, a write) and its result is
 * compared with the answer. Some adapters hand back a device that accepts every call and computes nothing
 * right (measured: Bun's `bun-webgpu` on Debian 12's Mesa returns a dummy adapter whose results are
 * silently wrong); this turns that into a refusal with a reason instead of wrong numbers.
 * @module
 */

const N = 64;

// The flag values the WebGPU spec fixes, not the GPUBufferUsage/GPUTextureUsage/GPUMapMode globals: a host
// whose WebGPU comes from a package (Bun's `bun-webgpu`) may not define them, and the test must still run.
const U = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, STORAGE: 0x80 } as const;
const T = { COPY_DST: 0x2, TEXTURE_BINDING: 0x4 } as const;
const MAP_READ = 0x1;

const SOURCE = `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var t: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  if (i >= ${N}u) { return; }
  let tex = textureLoad(t, vec2<u32>(i % 8u, i / 8u), 0).x;
  out[i] = a[i] * 3.0 + tex - f32(i / 5u);
}`;

/** The inputs and the expected output of the test. */
function cases(): { a: Float32Array<ArrayBuffer>; tex: Float32Array<ArrayBuffer>; want: Float32Array } {
  const a = Float32Array.from({ length: N }, (_, i) => (i % 7) - 3.5);
  const tex = Float32Array.from({ length: N }, (_, i) => 0.25 * i);
  const want = Float32Array.from({ length: N }, (_, i) => a[i] * 3 + tex[i] - Math.floor(i / 5));
  return { a, tex, want };
}

/**
 * Runs the self-test on `device`; resolves to null when the result is right, else to a one-line reason
 * (the first wrong value, or the error the device raised).
 */
export async function adapterSelfTest(device: GPUDevice): Promise<string | null> {
  const { a, tex, want } = cases();
  const made: { destroy(): void }[] = [];
  try {
    device.pushErrorScope("validation");
    const src = device.createBuffer({ size: a.byteLength, usage: U.STORAGE | U.COPY_DST });
    const out = device.createBuffer({ size: a.byteLength, usage: U.STORAGE | U.COPY_SRC });
    const read = device.createBuffer({ size: a.byteLength, usage: U.MAP_READ | U.COPY_DST });
    const texture = device.createTexture({
      size: [8, 8],
      format: "r32float",
      usage: T.TEXTURE_BINDING | T.COPY_DST,
    });
    made.push(src, out, read, texture);
    device.queue.writeBuffer(src, 0, a);
    device.queue.writeTexture({ texture }, tex, { bytesPerRow: 32 }, [8, 8]);
    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module: device.createShaderModule({ code: SOURCE }), entryPoint: "main" },
    });
    const group = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: src } },
        { binding: 1, resource: texture.createView() },
        { binding: 2, resource: { buffer: out } },
      ],
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(N / 16);
    pass.end();
    enc.copyBufferToBuffer(out, 0, read, 0, a.byteLength);
    device.queue.submit([enc.finish()]);
    const err = await device.popErrorScope();
    if (err) return `the device rejected the test program: ${err.message.split("\n")[0]}`;
    await read.mapAsync(MAP_READ);
    const got = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    for (let i = 0; i < N; i++) {
      if (got[i] !== want[i]) return `element ${i} of a known computation is ${got[i]}, expected ${want[i]}`;
    }
    return null;
  } catch (e) {
    return `the test program failed: ${(e as Error).message.split("\n")[0]}`;
  } finally {
    for (const m of made) m.destroy();
  }
}
