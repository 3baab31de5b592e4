/**
 * A prototype for issue #15, not the port: the kernel under Bun by giving Bun a `Deno` global that holds
 * the `Deno.*` calls kernel/main.ts, host_process.ts, host.ts, host_channel.ts, worker.ts and docs.ts make,
 * written on `node:` APIs (the sockets come from kernel/transport_node.ts). Loaded with
 * `bun --preload ./kernel/bun_shim.ts kernel/main.ts <connection file>`; the execution host it spawns and
 * that host's cell worker get the same preload. Where a Deno call has no Bun equivalent the shim says so
 * (`Deno.version.deno` is "none (Bun x.y.z)"; `--v8-flags` heap limits are dropped: Bun runs JavaScriptCore).
 * The real port replaces these calls in the kernel's own files with a small host adapter (as
 * runtime/platform.ts does for the library); this file measures what that adapter must cover.
 * @module
 */

import { spawn } from "node:child_process";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir, totalmem } from "node:os";
import process from "node:process";
import { Readable } from "node:stream";
import { inspect } from "node:util";
import { BadResource, connect, listen, unrefTimer } from "./transport_node.ts";

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const SELF = new URL(import.meta.url).pathname;

class NotFound extends Error {
  override name = "NotFound";
}

/** node:fs errors as Deno's: ENOENT is Deno.errors.NotFound. */
function denoError<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") throw new NotFound((e as Error).message);
    throw e;
  }
}

function fileInfo(path: string | URL) {
  const s = denoError(() => statSync(path));
  return { isFile: s.isFile(), isDirectory: s.isDirectory(), isSymlink: s.isSymbolicLink(), size: s.size };
}

/** `new Deno.Command(Deno.execPath(), { args: ["run", ...deno flags, script, ...] })` becomes `bun --preload shim script ...`. */
function bunArgs(cmd: string, args: string[]): [string, string[]] {
  if (cmd !== process.execPath || args[0] !== "run") return [cmd, args];
  const rest = args.slice(1);
  const out: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === "--config") i++; // Deno's import map; Bun reads tsconfig.json paths
    else if (a.startsWith("--")) continue; // --allow-all, --quiet, --v8-flags=... (no JSC equivalent here)
    else {
      out.push(...rest.slice(i));
      break;
    }
  }
  return [process.execPath, ["--preload", SELF, ...out]];
}

class Command {
  constructor(
    private cmd: string | URL,
    private opts: {
      args?: string[];
      env?: Record<string, string>;
      stdin?: string;
      stdout?: string;
      stderr?: string;
    } = {},
  ) {}

  spawn() {
    const [cmd, args] = bunArgs(String(this.cmd), this.opts.args ?? []);
    const io = (s?: string) => (s === "piped" ? "pipe" : s === "null" ? "ignore" : "inherit");
    const child = spawn(cmd, args, {
      env: { ...process.env, ...this.opts.env },
      stdio: [io(this.opts.stdin ?? "inherit"), io(this.opts.stdout), io(this.opts.stderr)],
    });
    const status = new Promise<{ success: boolean; code: number; signal: string | null }>((resolve) =>
      child.on("exit", (code, signal) => resolve({ success: code === 0, code: code ?? 128, signal }))
    );
    return {
      pid: child.pid ?? -1,
      status,
      stdout: child.stdout ? Readable.toWeb(child.stdout) : null,
      stderr: child.stderr ? Readable.toWeb(child.stderr) : null,
      kill(signal: string = "SIGTERM") {
        child.kill(signal as NodeJS.Signals);
      },
      ref() {},
      unref() {
        child.unref();
      },
    };
  }
}

/**
 * `Deno.inspect` on node:util's inspect. One visible difference handled: a string on its own is quoted as
 * Deno quotes it (double quotes unless it holds one); strings inside objects keep node's single quotes.
 */
function denoInspect(
  v: unknown,
  o: { depth?: number; colors?: boolean; iterableLimit?: number } = {},
): string {
  if (typeof v === "string") {
    const q = !v.includes('"') ? '"' : !v.includes("'") ? "'" : "`";
    return q + v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replaceAll(q, `\\${q}`) + q;
  }
  return inspect(v, {
    depth: o.depth ?? 4,
    colors: o.colors ?? false,
    maxArrayLength: o.iterableLimit ?? 100,
  });
}

/**
 * Defines the `Deno` global where none exists; under Deno it does nothing. Workers get the same preload.
 */
export function installDenoShim(): void {
  if (g.Deno) return;
  g.Deno = {
    args: process.argv.slice(2),
    pid: process.pid,
    version: { deno: `none (Bun ${g.Bun?.version ?? "?"})`, v8: "none (JavaScriptCore)", typescript: "5" },
    build: { os: process.platform },
    env: {
      get: (k: string) => process.env[k],
      set: (k: string, v: string) => void (process.env[k] = v),
      delete: (k: string) => void delete process.env[k],
      toObject: () => ({ ...process.env }),
    },
    errors: { NotFound, BadResource },
    exit: (code?: number) => process.exit(code),
    cwd: () => process.cwd(),
    execPath: () => process.execPath,
    kill: (pid: number, signal: string) => process.kill(pid, signal),
    addSignalListener: (sig: string, f: () => void) => process.on(sig, f),
    unrefTimer,
    listen,
    connect,
    inspect: denoInspect,
    systemMemoryInfo: () => ({ total: totalmem() }),
    loadavg: () => loadavg(),
    stdout: { writeSync: (b: Uint8Array) => (process.stdout.write(b), b.length) },
    stderr: { writeSync: (b: Uint8Array) => (process.stderr.write(b), b.length) },
    makeTempDirSync: (o: { prefix?: string } = {}) => mkdtempSync(`${tmpdir()}/${o.prefix ?? ""}`),
    mkdirSync: (p: string, o?: { recursive?: boolean }) => void mkdirSync(p, o),
    statSync: fileInfo,
    readDirSync: (p: string) =>
      denoError(() => readdirSync(p, { withFileTypes: true })).map((e) => ({
        name: e.name,
        isFile: e.isFile(),
        isDirectory: e.isDirectory(),
        isSymlink: e.isSymbolicLink(),
      })),
    readTextFileSync: (p: string | URL) => denoError(() => readFileSync(p, "utf8")),
    readTextFile: (p: string | URL) => readFile(p, "utf8"),
    writeTextFileSync: (p: string, s: string) => writeFileSync(p, s),
    writeTextFile: (p: string, s: string) => writeFile(p, s),
    copyFileSync: (a: string, b: string) => copyFileSync(a, b),
    removeSync: (p: string, o?: { recursive?: boolean }) => denoError(() => rmSync(p, o)),
    remove: (p: string, o?: { recursive?: boolean }) => rm(p, o),
    Command,
  };
  // a Worker started from here (the cell worker) needs the same global: Bun's Worker takes a preload list
  const Base = g.Worker;
  if (Base && g.Bun) {
    g.Worker = class extends Base {
      constructor(url: string | URL, o: Record<string, unknown> = {}) {
        super(url, { ...o, preload: [SELF, ...((o.preload as string[]) ?? [])] });
      }
    };
  }
}

installDenoShim();
