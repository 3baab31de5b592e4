/**
 * The library's tests under Bun, on the cpu backend: runs vitest inside Bun (`bun --bun`, vitest from the
 * node_modules `deno install` made) with `SEQLAB_DEVICE=cpu` over every test file of runtime/, ops/, models/,
 * serve/ and test/ (not the Jupyter kernel's), then sorts each failure by its cause:
 *
 * - needs WebGPU: the test stopped at `requireGpu()`'s notice or at a "webgpu is not available" error,
 *   as it does under Deno with `SEQLAB_DEVICE=cpu`; counted and named by file, not a failure of this run;
 * - Deno-only: the test itself calls `Deno.*` (it spawns `deno`, `Deno.Command`); each is named;
 * - anything else fails the run, with the test's name and the first line of its error.
 *
 * Then, when `bun-webgpu` resolves (NODE_PATH), test/bun_webgpu.ts: its adapter is used only if it passes
 * the self-test.
 *
 * Run: `deno task test:bun` or `bun test/bun.ts` (file names after it: only those files). Bun is `$BUN` if
 * set, else this process when Bun runs it, else `bun` on PATH, else `npx -y bun@1.4.5`.
 * @module
 */

import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";

const BUN_VERSION = "1.4.5";
const ROOT = new URL("..", import.meta.url).pathname;
const DIRS = ["runtime", "ops", "models", "serve", "test"];

/** Test files under `dir` (relative to the root), the kernel's left out. */
function testFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(`${ROOT}${dir}`, { withFileTypes: true })) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory() && path !== "test/kernel") out.push(...testFiles(path));
    else if (e.isFile() && /(_test\.ts|\.test\.ts)$/.test(e.name)) out.push(path);
  }
  return out.sort();
}

/** The command that starts Bun: [program, ...leading args]. */
function bunCommand(): string[] {
  if (process.env.BUN) return [process.env.BUN];
  // deno-lint-ignore no-explicit-any
  if ((globalThis as any).Bun) return [process.execPath];
  if (spawnSync("bun", ["--version"]).status === 0) return ["bun"];
  return ["npx", "-y", `bun@${BUN_VERSION}`];
}

const NEEDS_GPU = [
  /this test needs a WebGPU adapter/,
  /WebGPUError: .*(is not available on this host|no WebGPU device is available)/,
];
const DENO_ONLY = /ReferenceError: Deno is not defined/;

type Assertion = { fullName: string; status: string; failureMessages: string[] };
type FileResult = { name: string; status: string; message?: string; assertionResults: Assertion[] };

if (!existsSync(`${ROOT}node_modules/vitest/vitest.mjs`)) {
  console.error("test/bun.ts: node_modules/vitest is missing: run `npx -y deno@2.9.6 install` first");
  process.exit(2);
}
const picked = process.argv.slice(2); // test files named on the command line: only those
const files = picked.length ? picked : DIRS.flatMap(testFiles);
const [bun, ...lead] = bunCommand();
const version = spawnSync(bun, [...lead, "--version"], { encoding: "utf8" }).stdout.trim();
const out = mkdtempSync(`${tmpdir()}/seqlab-bun-`);
const started = Date.now();
console.log(`Bun ${version} (${[bun, ...lead].join(" ")}), cpu backend: vitest over ${files.length} files`);
const run = spawnSync(
  bun,
  [
    ...lead,
    "--bun",
    "node_modules/vitest/vitest.mjs",
    "run",
    ...files,
    "--reporter=json",
    `--outputFile=${out}/report.json`,
  ],
  { cwd: ROOT, env: { ...process.env, SEQLAB_DEVICE: "cpu" }, encoding: "utf8", maxBuffer: 1 << 28 },
);
if (!existsSync(`${out}/report.json`)) {
  console.error(`${run.stdout ?? ""}${run.stderr ?? ""}`.slice(-4000));
  console.error(`test/bun.ts: vitest under Bun wrote no report (exit ${run.status}, signal ${run.signal})`);
  process.exit(1);
}
const report = JSON.parse(readFileSync(`${out}/report.json`, "utf8")) as { testResults: FileResult[] };
rmSync(out, { recursive: true, force: true });

let passed = 0, gpu = 0, skipped = 0;
const denoOnly: string[] = [], failed: string[] = [], gpuFiles = new Map<string, number>();
for (const f of report.testResults) {
  const file = f.name.slice(ROOT.length);
  if (f.assertionResults.length === 0 && f.status === "failed") {
    const why = (f.message ?? "").split("\n")[0];
    if (/Deno is not defined/.test(why)) {
      denoOnly.push(`${file} (the whole file: it calls Deno.* as it loads)`);
    } else failed.push(`${file}: did not load: ${why}`);
  }
  for (const a of f.assertionResults) {
    const first = (a.failureMessages[0] ?? "").split("\n")[0];
    if (a.status === "passed") passed++;
    else if (a.status !== "failed") skipped++;
    else if (NEEDS_GPU.some((r) => r.test(first))) {
      gpu++;
      gpuFiles.set(file, (gpuFiles.get(file) ?? 0) + 1);
    } else if (DENO_ONLY.test(first)) denoOnly.push(`${file} > ${a.fullName}`);
    else failed.push(`${file} > ${a.fullName}: ${first}`);
  }
}
console.log(`${passed} passed, ${skipped} skipped or todo (${((Date.now() - started) / 1000).toFixed(0)} s)`);
console.log(
  `${gpu} need WebGPU (none here: they fail with the adapter notice, as under Deno with SEQLAB_DEVICE=cpu), ` +
    `in ${gpuFiles.size} files`,
);
console.log(`${denoOnly.length} call Deno.* in the test itself (not run under Bun):`);
for (const d of denoOnly) console.log(`  ${d}`);
// WebGPU through bun-webgpu, where it resolves: its adapter is used only if it passes the self-test
const env = { ...process.env };
delete env.SEQLAB_DEVICE;
const webgpu = spawnSync(bun, [...lead, "test/bun_webgpu.ts"], { cwd: ROOT, env, encoding: "utf8" });
const lines = `${webgpu.stdout ?? ""}${webgpu.stderr ?? ""}`.split("\n").filter((l) =>
  /^(ok|bun_webgpu|self-test)/.test(l)
);
if (webgpu.status === 2) console.log("bun-webgpu is not installed (NODE_PATH): the WebGPU check did not run");
else if (webgpu.status === 0) console.log(`bun-webgpu: ${lines.join("; ")}`);
else {failed.push(
    `test/bun_webgpu.ts (exit ${webgpu.status}): ${lines.join("; ") || webgpu.stderr.slice(-500)}`,
  );}
if (failed.length) {
  console.log(`${failed.length} FAILED:`);
  for (const f of failed) console.log(`  ${f}`);
  process.exit(1);
}
if (passed === 0) {
  console.log("FAILED: no test passed");
  process.exit(1);
}
console.log("ok: every test that runs on the cpu backend passed under Bun");
