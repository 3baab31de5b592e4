/** Device selection: which backend new tensors live on. */

import { env, notice } from "./platform.ts";
import type { DeviceName } from "./memory.ts";
import { adapterSelfTest } from "./selftest.ts";
import { GpuContext, WebGPUError } from "./webgpu.ts";

export type { DeviceName };

let gpuContext: GpuContext | null = null;
let defaultDevice: DeviceName = "cpu";
let initialised = false;

/**
 * Acquires the WebGPU adapter (once) and picks the default device: `SEQLAB_DEVICE=cpu|webgpu` forces one;
 * otherwise webgpu when an adapter exists and passes its self-test (`runtime/selftest.ts`: a tiny known
 * computation), else cpu with a one-line notice saying why. Called by mod.ts on import.
 */
export async function initDevices(): Promise<DeviceName> {
  if (initialised) return defaultDevice;
  initialised = true;
  const forced = env("SEQLAB_DEVICE");
  if (forced !== undefined && forced !== "" && forced !== "cpu" && forced !== "webgpu") {
    throw new Error(`SEQLAB_DEVICE must be "cpu" or "webgpu", got ${JSON.stringify(forced)}`);
  }
  if (forced === "cpu") {
    defaultDevice = "cpu";
    return defaultDevice;
  }
  let failed = false; // its notice said why already: one line, not two
  try {
    gpuContext = await GpuContext.create();
  } catch (e) {
    failed = true;
    if (forced === "webgpu") {
      throw new WebGPUError(`SEQLAB_DEVICE=webgpu but no device: ${(e as Error).message}`);
    }
    notice(`WebGPU failed to start (${(e as Error).message}); using the cpu backend`);
  }
  if (gpuContext) {
    // a device that accepts every call but computes wrong numbers is refused before anything runs on it
    const why = await adapterSelfTest(gpuContext.device);
    if (why) {
      const i = gpuContext.info;
      const name = i.description || i.vendor || (i.device ? `adapter ${i.device}` : "the WebGPU adapter");
      gpuContext.device.destroy();
      gpuContext = null;
      if (forced === "webgpu") {
        throw new WebGPUError(`SEQLAB_DEVICE=webgpu but ${name} failed its self-test: ${why}`);
      }
      notice(`${name} failed the WebGPU self-test (${why}); using the cpu backend`);
      return defaultDevice;
    }
    defaultDevice = "webgpu";
  } else if (forced === "webgpu") {
    throw new WebGPUError("SEQLAB_DEVICE=webgpu but this host has no WebGPU adapter");
  } else if (!failed) {
    notice("no WebGPU adapter found; using the cpu backend");
  }
  return defaultDevice;
}

/**
 * The device new tensors go to when none is named.
 *
 * @example
 * ```ts
 * import { getDevice } from "seqlab";
 * console.log(getDevice()); // "webgpu" (or "cpu" on a host without WebGPU)
 * ```
 */
export function getDevice(): DeviceName {
  return defaultDevice;
}

/**
 * Sets the default device for new tensors.
 *
 * @example
 * ```ts
 * import { getDevice, setDefaultDevice } from "seqlab";
 * const was = getDevice();
 * setDefaultDevice("cpu");
 * setDefaultDevice(was);
 * ```
 */
export function setDefaultDevice(device: DeviceName): void {
  checkDevice("setDefaultDevice", device);
  defaultDevice = device;
}

/** Validates a device name and that it is available. */
export function checkDevice(op: string, device: unknown): DeviceName {
  if (device === "cpu") return "cpu";
  if (device === "webgpu") {
    if (!gpuContext) {
      throw new WebGPUError(`${op}: device "webgpu" is not available on this host (no adapter)`);
    }
    return "webgpu";
  }
  throw new Error(`${op}: unknown device ${JSON.stringify(device)}; expected "cpu" or "webgpu"`);
}

/** Whether a WebGPU device is available. */
export function hasWebGPU(): boolean {
  return gpuContext !== null;
}

/** The WebGPU context; throws when there is none. */
export function gpu(): GpuContext {
  if (!gpuContext) throw new WebGPUError("webgpu: no WebGPU device is available on this host");
  return gpuContext;
}

/** A one-line description of the WebGPU adapter, or why there is none. */
export function adapterInfo(): string {
  if (!gpuContext) return "no WebGPU adapter (cpu backend only)";
  const i = gpuContext.info;
  const f16 = gpuContext.hasF16 ? ", shader-f16" : "";
  return `${i.description || i.vendor || "unknown adapter"} (vendor ${i.vendor || "?"}${f16}, ` +
    `maxStorageBufferBindingSize ${Math.round(gpuContext.maxBinding / 2 ** 20)} MiB)`;
}
