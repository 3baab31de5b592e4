/**
 * The one place the library touches its host runtime. Under Deno it calls `Deno.*`; under Bun and Node,
 * which have no `Deno` global, the same functions use `node:fs` and `process`. Everything else in runtime/,
 * ops/ and models/ uses only web-standard APIs.
 * @module
 */

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** Reads an environment variable, or undefined when absent or not permitted. */
export function env(name: string): string | undefined {
  try {
    if (g.Deno?.env?.get) return g.Deno.env.get(name) ?? undefined;
    return g.process?.env?.[name];
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

/** Prints a one-line notice to stderr (falls back to console.error). */
export function notice(message: string): void {
  console.error(`seqlab: ${message}`);
}

/** The name of the host runtime, for adapter reports. */
export function hostName(): string {
  if (g.Deno?.version?.deno) return `Deno ${g.Deno.version.deno}`;
  if (g.Bun?.version) return `Bun ${g.Bun.version}`;
  if (g.process?.versions?.node) return `Node ${g.process.versions.node}`;
  return "unknown host";
}

/**
 * The host's WebGPU entry point: `navigator.gpu` where the runtime has one (Deno), undefined where it has
 * none (Node). Bun has none of its own; there the optional `bun-webgpu` package (Dawn over FFI; not a
 * dependency of seqlab) provides it when Bun can resolve it (installed beside the script, or on
 * `NODE_PATH`). Throws, with the reason, when Bun has no way to WebGPU, so the caller's notice says why.
 *
 * @example
 * ```ts
 * import { webgpuEntry } from "./platform.ts";
 * const gpu = await webgpuEntry(); // Deno: its own navigator.gpu
 * console.log(gpu ? "a WebGPU entry point (an adapter may still be absent)" : "no WebGPU");
 * ```
 */
export async function webgpuEntry(): Promise<GPU | undefined> {
  if (g.navigator?.gpu) return g.navigator.gpu as GPU;
  if (!g.Bun) return undefined;
  const name = "bun-webgpu"; // a variable, not a literal: nothing resolves or bundles it unless Bun runs this
  let m: { setupGlobals(): void };
  try {
    m = await import(name);
  } catch (e) {
    const err = e as { code?: string; message?: string };
    if (err.code === "ERR_MODULE_NOT_FOUND") {
      throw new Error("Bun has no WebGPU of its own and the optional bun-webgpu package is not installed");
    }
    throw new Error(`bun-webgpu failed to load: ${String(err.message).split("\n")[0]}`);
  }
  m.setupGlobals(); // navigator.gpu and the GPUBufferUsage-style flag globals the backend uses
  return g.navigator?.gpu as GPU | undefined;
}

/**
 * Reads a whole file as bytes (Deno, else Node's `fs`).
 *
 * @example
 * ```ts
 * import { readFile, writeFile } from "./platform.ts";
 * const path = await Deno.makeTempFile();
 * await writeFile(path, new Uint8Array([1, 2, 3]));
 * console.log(await readFile(path)); // Uint8Array [1, 2, 3]
 * await Deno.remove(path);
 * ```
 */
export async function readFile(path: string): Promise<Uint8Array> {
  if (g.Deno?.readFile) return await g.Deno.readFile(path);
  const fs = await import("node:fs/promises");
  return new Uint8Array(await fs.readFile(path));
}

/** A path's directory ("." when it has none) and last component; both separators are understood. */
function splitPath(path: string): [string, string] {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return [i < 0 ? "." : i === 0 ? path.slice(0, 1) : path.slice(0, i), path.slice(i + 1)];
}

/** Temporary files of an atomic write to `path` are `<path>.tmp-<base-36 letters and digits>`. */
const TMP_TAIL = /^\.tmp-[0-9a-z]+$/;

/**
 * Flushes a directory's entries to disk (so a rename in it survives a power cut). A no-op where the
 * runtime or the file system cannot open or sync a directory (Windows, some network file systems).
 */
async function syncDir(dir: string): Promise<void> {
  try {
    if (g.Deno?.open) {
      const d = await g.Deno.open(dir, { read: true });
      try {
        await d.sync();
      } finally {
        d.close();
      }
      return;
    }
    const fs = await import("node:fs/promises");
    const d = await fs.open(dir, "r");
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // cannot sync a directory here: the rename is still atomic, only its durability is the OS's
  }
}

/**
 * Removes the temporary files that killed atomic writes to `path` left behind (`<path>.tmp-<random>`,
 * as {@link writeFile} names them; no other file is touched). Returns their names. A write to the same
 * path running concurrently in another process loses its temporary file and fails.
 *
 * @example
 * ```ts
 * import { removeStaleTemps } from "./platform.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeFile(`${dir}/ckpt.safetensors.tmp-k3j9x`, new Uint8Array(4));
 * await Deno.writeFile(`${dir}/other.safetensors.tmp-k3j9x`, new Uint8Array(4));
 * console.log(await removeStaleTemps(`${dir}/ckpt.safetensors`)); // ["ckpt.safetensors.tmp-k3j9x"]
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function removeStaleTemps(path: string): Promise<string[]> {
  const [dir, base] = splitPath(path);
  const stale = (name: string) => name.startsWith(base) && TMP_TAIL.test(name.slice(base.length));
  const removed: string[] = [];
  if (g.Deno?.readDir) {
    for await (const e of g.Deno.readDir(dir)) {
      if (e.isFile && stale(e.name)) {
        await g.Deno.remove(`${dir}/${e.name}`).catch(() => {}); // gone already: fine
        removed.push(e.name);
      }
    }
    return removed.sort();
  }
  const fs = await import("node:fs/promises");
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    if (e.isFile() && stale(e.name)) {
      await fs.rm(`${dir}/${e.name}`, { force: true });
      removed.push(e.name);
    }
  }
  return removed.sort();
}

/**
 * Writes bytes to a file atomically and durably: removes the temporary files of earlier writes to `path`
 * that were killed ({@link removeStaleTemps}), writes `path.tmp-<random>`, fsyncs it, renames it over
 * `path` and fsyncs the directory. A crash or kill at any point leaves either the old file or the new
 * one under `path`, never a truncated one; after the call returns the new file survives a power cut
 * (where the OS honours fsync; directory sync is skipped where the runtime cannot do it).
 *
 * @example
 * ```ts
 * import { readFile, writeFile } from "./platform.ts";
 * const path = await Deno.makeTempFile();
 * await writeFile(path, new Uint8Array([7]));
 * console.log((await readFile(path))[0]); // 7
 * await Deno.remove(path);
 * ```
 */
export async function writeFile(path: string, bytes: Uint8Array): Promise<void> {
  await removeStaleTemps(path);
  const tmp = `${path}.tmp-${Math.random().toString(36).slice(2, 10) || "0"}`;
  if (g.Deno?.open) {
    try {
      const f = await g.Deno.open(tmp, { write: true, createNew: true });
      try {
        // chunks: one write call may write less than asked, and a huge one blocks the runtime longer
        for (let at = 0; at < bytes.length;) at += await f.write(bytes.subarray(at, at + (1 << 24)));
        await f.sync();
      } finally {
        f.close();
      }
      await g.Deno.rename(tmp, path);
    } catch (e) {
      await g.Deno.remove(tmp).catch(() => {});
      throw e;
    }
  } else {
    const fs = await import("node:fs/promises");
    try {
      const f = await fs.open(tmp, "wx");
      try {
        await f.writeFile(bytes);
        await f.sync();
      } finally {
        await f.close();
      }
      await fs.rename(tmp, path);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => {});
      throw e;
    }
  }
  await syncDir(splitPath(path)[0]);
}

/**
 * Whether `path` names an existing regular file; false when nothing is there, and any other failure
 * (no read permission) is thrown.
 *
 * @example
 * ```ts
 * import { fileExists } from "./platform.ts";
 * const path = await Deno.makeTempFile();
 * console.log(await fileExists(path), await fileExists(`${path}.missing`)); // true false
 * await Deno.remove(path);
 * ```
 */
export async function fileExists(path: string): Promise<boolean> {
  try {
    if (g.Deno?.stat) return (await g.Deno.stat(path)).isFile;
    const fs = await import("node:fs/promises");
    return (await fs.stat(path)).isFile();
  } catch (e) {
    const err = e as { name?: string; code?: string };
    if (err.name === "NotFound" || err.code === "ENOENT" || err.code === "ENOTDIR") return false;
    throw e;
  }
}
