/**
 * kernel:install PREFIX: the kernelspec lands under PREFIX/share/jupyter/kernels, the command prints the
 * JUPYTER_PATH line, and with that line a real Jupyter client (Debian's jupyter_client) finds the kernel;
 * Notebook's kernelspec API lists its logos, which are the ones kernel/assets/logo.ts draws.
 */
import { expect, test } from "vitest";
import { pathHint } from "../../kernel/install.ts";
import { LOGO_FILES, logoPng } from "../../kernel/assets/logo.ts";
import { ROOT, run } from "./harness.ts";

test("kernel:install PREFIX prints the JUPYTER_PATH that makes jupyter_client find the kernel", async () => {
  const prefix = Deno.makeTempDirSync({ prefix: "seqlab-install-" });
  try {
    const r = await run(Deno.execPath(), ["run", "-A", `${ROOT}/kernel/install.ts`, prefix], {
      timeoutMs: 60_000,
    });
    expect(r.code, r.stderr).toBe(0);
    const line = r.stdout.split("\n").find((l) => l.trim().startsWith("export JUPYTER_PATH="));
    expect(line, r.stdout).toBeDefined();
    const path = line!.trim().slice("export JUPYTER_PATH=".length).split(":")[0];
    expect(path).toBe(`${prefix}/share/jupyter`);
    const find = (env: Record<string, string>) =>
      run("/usr/bin/python3", [
        "-c",
        "from jupyter_client.kernelspec import KernelSpecManager as K; print(K().find_kernel_specs().get('seqlab', 'missing'))",
      ], { timeoutMs: 60_000, env });
    const found = await find({ JUPYTER_PATH: path, JUPYTER_DATA_DIR: `${prefix}/nowhere` });
    expect(found.stdout.trim()).toBe(`${prefix}/share/jupyter/kernels/seqlab`);
    // The logos, as Notebook's /api/kernelspecs lists them (resources named logo-WxH.png in the spec's dir).
    const resources = await run("/usr/bin/python3", [
      "-c",
      "import json, types; from notebook.services.kernelspecs.handlers import kernelspec_model as m; " +
      "from jupyter_client.kernelspec import KernelSpecManager as K; " +
      "print(json.dumps(sorted(m(types.SimpleNamespace(base_url='/'), 'seqlab', {}, K().get_kernel_spec('seqlab').resource_dir)['resources'])))",
    ], { timeoutMs: 60_000, env: { JUPYTER_PATH: path, JUPYTER_DATA_DIR: `${prefix}/nowhere` } });
    expect(resources.stdout.trim(), resources.stderr).toBe('["logo-32x32", "logo-64x64"]');
    for (const logo of LOGO_FILES) {
      const size = Number(logo.match(/(\d+)x/)![1]);
      expect(
        Deno.readFileSync(`${prefix}/share/jupyter/kernels/seqlab/${logo}`),
        `${logo} is stale: run kernel/assets/logo.ts`,
      )
        .toEqual(logoPng(size));
    }
    const without = await find({ JUPYTER_PATH: "", JUPYTER_DATA_DIR: `${prefix}/nowhere` });
    expect(without.stdout.trim()).not.toBe(`${prefix}/share/jupyter/kernels/seqlab`);
    expect(pathHint(undefined)).toBeNull();
  } finally {
    Deno.removeSync(prefix, { recursive: true });
  }
});

// `deno install` (README's install, .ci/run) fetches every npm package deno.lock names, not only deno.json's
// imports, so a test- or bench-only peer that reaches the lock (a `deno run` of its inline npm: specifier
// without --no-lock) is fetched for every user: tfjs and onnxruntime-web were 200 MB of 409.
// The committed lock is what a fresh clone installs from: running the notebooks before the tests writes their
// bench peers into the working copy's lock (their cells import them), which says nothing about the clone.
function committedLock(): string {
  const git = new Deno.Command("git", { args: ["-C", ROOT, "show", "HEAD:deno.lock"], stderr: "null" });
  try {
    const r = git.outputSync();
    if (r.success) return new TextDecoder().decode(r.stdout);
  } catch { /* no git: the working copy's */ }
  return Deno.readTextFileSync(`${ROOT}/deno.lock`);
}

test("deno.lock names only deno.json's imports: the plain deno install fetches no test or bench peer", () => {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const lock = JSON.parse(committedLock());
  const imports = new Set(Object.values(config.imports as Record<string, string>));
  const extra = Object.keys(lock.specifiers ?? {}).filter((s) => !imports.has(s));
  expect(extra, "run the peer with --no-lock and drop these from deno.lock").toEqual([]);
  expect(imports.has("npm:zeromq@6.8.0"), "zeromq is a test peer (test/kernel/npm_zeromq.test.ts)").toBe(
    false,
  );
});
