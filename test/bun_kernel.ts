/**
 * The Jupyter kernel under Bun, prototype (issue #15): writes a throwaway kernelspec whose argv is
 * `bun --preload kernel/bun_shim.ts kernel/main.ts {connection_file}` and runs the kernel's conformance
 * test, jupyter_kernel_test's KernelTests (test/kernel/jupyter_kernel_test_seqlab.py, the file
 * test/kernel/protocol.test.ts runs against the Deno kernel), with Debian's python3. Prints the unittest
 * verdict; exits with its status.
 *
 * Known flake, not Bun's: kernel/host_process.ts's HostListener hands frames that arrive in the same read
 * as the host's hello to a placeholder handler, so a `ready` coalesced with `hello` is dropped and every
 * cell waits forever (seen under Bun, whose host starts fast enough for the two to share one read).
 *
 * Run: `bun test/bun_kernel.ts` (or `deno run -A test/bun_kernel.ts` with bun on PATH or in $BUN).
 * @module
 */

import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";

const ROOT = new URL("..", import.meta.url).pathname;
// deno-lint-ignore no-explicit-any
const bun = process.env.BUN ?? ((globalThis as any).Bun ? process.execPath : "bun");
const version = spawnSync(bun, ["--version"], { encoding: "utf8" });
if (version.status !== 0) {
  console.error(`bun_kernel: no Bun at ${bun} (set BUN or put bun on PATH)`);
  process.exit(2);
}
const prefix = mkdtempSync(`${tmpdir()}/seqlab-bun-kspec-`);
const spec = `${prefix}/share/jupyter/kernels/seqlab`;
mkdirSync(spec, { recursive: true });
mkdirSync(`${prefix}/runtime`);
writeFileSync(
  `${spec}/kernel.json`,
  JSON.stringify({
    argv: [bun, "--preload", `${ROOT}kernel/bun_shim.ts`, `${ROOT}kernel/main.ts`, "{connection_file}"],
    display_name: "seqlab (TypeScript, Bun)",
    language: "typescript",
    interrupt_mode: "message",
    // no WebGPU probe: under Bun without bun-webgpu its one-line notice would reach the first cell's
    // output as a stream message, ahead of the status KernelTests expects first
    env: { SEQLAB_DEVICE: "cpu" },
  }),
);
console.log(`Bun ${version.stdout.trim()}: jupyter_kernel_test against kernel/main.ts under Bun`);
const r = spawnSync("/usr/bin/python3", ["-m", "unittest", "-v", "jupyter_kernel_test_seqlab"], {
  cwd: `${ROOT}test/kernel`,
  encoding: "utf8",
  timeout: 300_000,
  env: {
    ...process.env,
    JUPYTER_PATH: `${prefix}/share/jupyter`,
    JUPYTER_RUNTIME_DIR: `${prefix}/runtime`,
    XDG_RUNTIME_DIR: `${prefix}/runtime`,
    JUPYTER_PLATFORM_DIRS: "1",
    PYDEVD_DISABLE_FILE_VALIDATION: "1",
    PYTHONDONTWRITEBYTECODE: "1",
  },
});
rmSync(prefix, { recursive: true, force: true });
const report = (r.stderr ?? "").split("\n").filter((l) => !l.startsWith("[seqlab kernel]"));
const lines = report.filter((l) => / \.\.\. |^Ran |^OK|^FAILED|^(FAIL|ERROR):|Error:/.test(l));
console.log(lines.join("\n"));
process.exit(r.status ?? 1);
