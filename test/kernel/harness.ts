/**
 * Helpers for the kernel tests: a throwaway kernelspec, Debian's python clients, bounded processes.
 *
 * Every process gets a timeout; python is /usr/bin/python3 (Debian's, which has jupyter_client,
 * nbclient, nbconvert, jupyter_console, jupyter_kernel_test and pyzmq), not whatever is first on PATH.
 */
import { install } from "../../kernel/install.ts";

/** Debian's python. */
export const PYTHON = "/usr/bin/python3";
/** Repository root. */
export const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
/** Directory of these tests. */
export const HERE = `${ROOT}/test/kernel`;

/** Whether the heavy variants (SEQLAB_HEAVY=1) run. */
export const HEAVY = Deno.env.get("SEQLAB_HEAVY") === "1";

let envCache: Record<string, string> | null = null;

/** Environment with a fresh kernelspec (this checkout) first on JUPYTER_PATH and private runtime dirs. */
export function jupyterEnv(): Record<string, string> {
  if (envCache) return envCache;
  const prefix = Deno.makeTempDirSync({ prefix: "seqlab-kspec-" });
  install(prefix);
  const runtime = `${prefix}/runtime`;
  Deno.mkdirSync(runtime, { recursive: true });
  envCache = {
    JUPYTER_PATH: `${prefix}/share/jupyter`,
    JUPYTER_RUNTIME_DIR: runtime,
    XDG_RUNTIME_DIR: runtime,
    JUPYTER_PLATFORM_DIRS: "1",
    PYDEVD_DISABLE_FILE_VALIDATION: "1",
    PYTHONDONTWRITEBYTECODE: "1",
  };
  return envCache;
}

/** Result of a finished process. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
  timedOut: boolean;
}

/** Run a command with a hard timeout; never throws for a non-zero exit. */
export async function run(
  cmd: string,
  args: string[],
  opts: { stdin?: string; timeoutMs?: number; cwd?: string; env?: Record<string, string> } = {},
): Promise<Ran> {
  const t0 = performance.now();
  const ac = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, opts.timeoutMs ?? 120_000);
  const child = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd ?? ROOT,
    env: { ...jupyterEnv(), ...(opts.env ?? {}) },
    stdin: opts.stdin !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    signal: ac.signal,
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    seconds: (performance.now() - t0) / 1000,
    timedOut,
  };
}

/** One execute step's outcome as driver.py reports it. */
export interface ExecResult {
  reply: Record<string, unknown> & { status: string; ename?: string; evalue?: string; traceback?: string[] };
  outputs: {
    type: string;
    content: Record<string, unknown> & { text?: string; data?: Record<string, unknown> };
  }[];
  prompts: string[];
  states: string[];
  late: string[];
  order_ok: boolean;
  seconds: number;
  stop_seconds: number | null;
  timed_out: boolean;
}

/** Run driver.py steps against a fresh kernel. */
export async function drive(steps: Record<string, unknown>[], timeoutMs = 120_000): Promise<unknown[]> {
  const r = await run(PYTHON, [`${HERE}/driver.py`], { stdin: JSON.stringify({ steps }), timeoutMs });
  if (r.code !== 0) {
    throw new Error(
      `driver.py exited ${r.code}${r.timedOut ? " (timed out)" : ""}:\n${r.stderr.slice(-4000)}`,
    );
  }
  return JSON.parse(r.stdout).results;
}

/** Text of an execute's stdout stream outputs. */
export function stdoutOf(r: ExecResult, name = "stdout"): string {
  return r.outputs.filter((o) => o.type === "stream" && o.content.name === name).map((o) => o.content.text)
    .join("");
}

/** text/plain of the execute_result, if any. */
export function resultOf(r: ExecResult): string | undefined {
  const o = r.outputs.find((o) => o.type === "execute_result");
  return o?.content.data?.["text/plain"] as string | undefined;
}
