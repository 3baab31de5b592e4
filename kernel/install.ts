/**
 * Install the seqlab kernelspec.
 *
 * Usage: deno task kernel:install [PREFIX] [--name NAME]
 *
 * Without PREFIX the spec goes to the user's Jupyter data directory ($JUPYTER_DATA_DIR, else
 * $XDG_DATA_HOME/jupyter, else ~/.local/share/jupyter; on macOS ~/Library/Jupyter). With PREFIX it goes
 * to PREFIX/share/jupyter/kernels/NAME, the layout `jupyter kernelspec install --prefix` uses.
 *
 * The spec runs this checkout's kernel with the Deno that ran this script, so it keeps working offline
 * and from any directory. Beside kernel.json go the logos (kernel/assets/logo-*.png, drawn by
 * kernel/assets/logo.ts), which Notebook and JupyterLab show for the kernel.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { installKernelAssets } from "./assets/mod.ts";

/** The kernel.json for this checkout. */
export function kernelSpec(denoPath = Deno.execPath()): Record<string, unknown> {
  const kernelDir = dirname(fileURLToPath(import.meta.url));
  const root = dirname(kernelDir);
  return {
    argv: [
      denoPath,
      "run",
      "--allow-all",
      "--quiet",
      "--config",
      join(root, "deno.json"),
      join(kernelDir, "main.ts"),
      "{connection_file}",
    ],
    display_name: "seqlab (TypeScript)",
    language: "typescript",
    interrupt_mode: "message",
    env: {},
    metadata: { debugger: false },
  };
}

/** The user's Jupyter data directory. */
export function userDataDir(): string {
  const env = Deno.env.toObject();
  if (env.JUPYTER_DATA_DIR) return env.JUPYTER_DATA_DIR;
  const home = env.HOME ?? env.USERPROFILE ?? ".";
  if (Deno.build.os === "darwin") return join(home, "Library", "Jupyter");
  if (Deno.build.os === "windows") return join(env.APPDATA ?? home, "jupyter");
  return join(env.XDG_DATA_HOME ?? join(home, ".local", "share"), "jupyter");
}

/**
 * For a PREFIX install, how to make Jupyter look there (it searches sys.prefix, the user's data directory
 * and JUPYTER_PATH, not an arbitrary prefix): the `export JUPYTER_PATH=...` line, or null without a prefix.
 */
export function pathHint(prefix?: string): string | null {
  if (!prefix) return null;
  const data = join(prefix, "share", "jupyter");
  const have = (Deno.env.get("JUPYTER_PATH") ?? "").split(Deno.build.os === "windows" ? ";" : ":");
  if (have.includes(data)) return `JUPYTER_PATH already lists ${data}: Jupyter will find it.`;
  return `Jupyter looks for kernels in its own prefix, your data directory and JUPYTER_PATH; to use this one:\n` +
    `  export JUPYTER_PATH=${data}${have[0] ? ":$JUPYTER_PATH" : ""}\n` +
    `then check with \`jupyter kernelspec list\`.`;
}

/** Write kernel.json and the kernelspec's assets (logos, plotly.js); returns the directory written. */
export function install(prefix?: string, name = "seqlab"): string {
  const dir = prefix
    ? join(prefix, "share", "jupyter", "kernels", name)
    : join(userDataDir(), "kernels", name);
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(join(dir, "kernel.json"), JSON.stringify(kernelSpec(), null, 2) + "\n");
  // the logos, and plotly.min.js, which figure outputs load from /kernelspecs/NAME/
  installKernelAssets(dir);
  return dir;
}

if (import.meta.main) {
  const args = [...Deno.args];
  let name = "seqlab";
  const i = args.indexOf("--name");
  if (i >= 0) {
    name = args[i + 1];
    args.splice(i, 2);
  }
  if (args.includes("--help") || args.includes("-h")) {
    console.log("usage: deno task kernel:install [PREFIX] [--name NAME]");
    Deno.exit(0);
  }
  const dir = install(args[0], name);
  console.log(`installed kernelspec "${name}" in ${dir}`);
  const hint = pathHint(args[0]);
  if (hint) console.log(hint);
}
