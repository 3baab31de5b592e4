/** The memory ledger: bytes in use, peak bytes and live buffers, per device. */

/** A device name. */
export type DeviceName = "cpu" | "webgpu";

/** A snapshot of one device's ledger. */
export interface MemoryInfo {
  /** Bytes held by live tensors' storage (after size-class rounding on webgpu). */
  bytesInUse: number;
  /** Highest `bytesInUse` since start or the last `resetPeak`. */
  peakBytes: number;
  /** Number of live storage buffers. */
  liveBuffers: number;
  /** Bytes of freed buffers kept by the pool for reuse (webgpu only). */
  pooledBytes: number;
}

const ledgers: Record<DeviceName, MemoryInfo> = {
  cpu: { bytesInUse: 0, peakBytes: 0, liveBuffers: 0, pooledBytes: 0 },
  webgpu: { bytesInUse: 0, peakBytes: 0, liveBuffers: 0, pooledBytes: 0 },
};

/** Records an allocation of `bytes` on `device`. */
export function ledgerAlloc(device: DeviceName, bytes: number): void {
  const l = ledgers[device];
  l.bytesInUse += bytes;
  l.liveBuffers++;
  if (l.bytesInUse > l.peakBytes) l.peakBytes = l.bytesInUse;
}

/** Records a release of `bytes` on `device`. */
export function ledgerFree(device: DeviceName, bytes: number): void {
  const l = ledgers[device];
  l.bytesInUse -= bytes;
  l.liveBuffers--;
}

/** Adjusts the pooled-bytes figure (webgpu's buffer pool). */
export function ledgerPooled(device: DeviceName, delta: number): void {
  ledgers[device].pooledBytes += delta;
}

/**
 * The memory ledger of a device: bytes in use, peak bytes, live buffers, pooled bytes.
 *
 * @example
 * ```ts
 * import { memory, zeros } from "seqlab";
 * const before = memory("cpu").bytesInUse;
 * const t = zeros([256], { device: "cpu" });
 * console.log(memory("cpu").bytesInUse - before); // 1024
 * t.dispose();
 * ```
 */
export function memory(device: DeviceName = "webgpu"): MemoryInfo {
  return { ...ledgers[device] };
}

/**
 * Resets a device's peak to its current bytes in use, to measure the peak of what follows.
 *
 * @example
 * ```ts
 * import { memory, resetPeak } from "seqlab";
 * resetPeak("cpu");
 * console.log(memory("cpu").peakBytes === memory("cpu").bytesInUse); // true
 * ```
 */
export function resetPeak(device: DeviceName = "webgpu"): void {
  ledgers[device].peakBytes = ledgers[device].bytesInUse;
}
