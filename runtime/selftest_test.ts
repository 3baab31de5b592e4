import { expect, test } from "vitest";
import { gpu } from "./device.ts";
import { adapterSelfTest } from "./selftest.ts";
import { requireGpu } from "../test/helpers.ts";

test("the self-test passes on a working adapter", async () => {
  requireGpu();
  expect(await adapterSelfTest(gpu().device)).toBeNull();
});

/**
 * A device that accepts every call and reads back zeros: what `bun-webgpu` hands out on Debian 12's Mesa
 * (measured), mimicked.
 */
function dummyDevice(fill = 0): GPUDevice {
  const buffer = (size: number) => ({
    destroy() {},
    mapAsync: () => Promise.resolve(),
    getMappedRange: () => new Float32Array(size / 4).fill(fill).buffer,
    unmap() {},
  });
  const pass = { setPipeline() {}, setBindGroup() {}, dispatchWorkgroups() {}, end() {} };
  return {
    pushErrorScope() {},
    popErrorScope: () => Promise.resolve(null),
    createBuffer: (d: { size: number }) => buffer(d.size),
    createTexture: () => ({ destroy() {}, createView: () => ({}) }),
    createShaderModule: () => ({}),
    createComputePipeline: () => ({ getBindGroupLayout: () => ({}) }),
    createBindGroup: () => ({}),
    createCommandEncoder: () => ({
      beginComputePass: () => pass,
      copyBufferToBuffer() {},
      finish: () => ({}),
    }),
    queue: { writeBuffer() {}, writeTexture() {}, submit() {} },
  } as unknown as GPUDevice;
}

test("a dummy adapter that computes nothing is refused with the first wrong value", async () => {
  expect(await adapterSelfTest(dummyDevice())).toBe("element 0 of a known computation is 0, expected -10.5");
  // right at element 0 by chance, wrong later: still refused
  expect(await adapterSelfTest(dummyDevice(-10.5))).toMatch(
    /^element 1 of a known computation is -10.5, expected/,
  );
});

test("a device that throws is refused with the error", async () => {
  const d = {
    ...dummyDevice(),
    createComputePipeline: () => {
      throw new Error("no compute");
    },
  } as unknown as GPUDevice;
  expect(await adapterSelfTest(d)).toBe("the test program failed: no compute");
});
