/**
 * The one place the library touches its host runtime (Deno today; Bun and Node later).
 * Everything else in runtime/, ops/ and models/ uses only web-standard APIs.
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

/**
 * Writes bytes to a file atomically: to `path.tmp-<random>` first, then renamed over `path`, so a crash
 * mid-write never leaves a truncated file under the real name.
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
  const tmp = `${path}.tmp-${Math.random().toString(36).slice(2, 10)}`;
  if (g.Deno?.writeFile) {
    try {
      await g.Deno.writeFile(tmp, bytes);
      await g.Deno.rename(tmp, path);
    } catch (e) {
      await g.Deno.remove(tmp).catch(() => {});
      throw e;
    }
    return;
  }
  const fs = await import("node:fs/promises");
  try {
    await fs.writeFile(tmp, bytes);
    await fs.rename(tmp, path);
  } catch (e) {
    await fs.rm(tmp, { force: true }).catch(() => {});
    throw e;
  }
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
