/**
 * Files that pages showing seqlab's outputs load: plotly.js, from the installed npm package.
 *
 * A figure's HTML output (kernel/display.ts) loads plotly.js once per page from the kernelspec directory,
 * which Jupyter serves at `<base>/kernelspecs/<name>/plotly.min.js` (Notebook 6, JupyterLab, Notebook 7):
 * `installKernelAssets` puts it there. The run report (kernel/report.ts) copies it next to the page.
 *
 * @example
 * ```ts
 * import { plotlyVersion } from "./mod.ts";
 * console.log(plotlyVersion()); // "3.7.0", or null when node_modules has no plotly.js-dist-min
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { LOGO_FILES } from "./logo.ts";

/** The file name plotly.js has wherever seqlab puts it. */
export const PLOTLY_FILE = "plotly.min.js";

const PACKAGE = new URL("../../node_modules/plotly.js-dist-min/", import.meta.url);

/**
 * Path of the installed plotly.min.js, or null when the npm package is not installed.
 *
 * @example
 * ```ts
 * import { plotlyPath } from "./mod.ts";
 * const p = plotlyPath(); // ".../node_modules/plotly.js-dist-min/plotly.min.js" or null
 * ```
 */
export function plotlyPath(): string | null {
  const url = new URL(PLOTLY_FILE, PACKAGE);
  try {
    return Deno.statSync(url).isFile ? url.pathname : null;
  } catch {
    return null;
  }
}

let version: string | null | undefined;

/**
 * Version of the installed plotly.js, or null when the npm package is not installed.
 *
 * @example
 * ```ts
 * import { plotlyVersion } from "./mod.ts";
 * const v = plotlyVersion(); // e.g. "3.7.0"
 * ```
 */
export function plotlyVersion(): string | null {
  if (version !== undefined) return version;
  try {
    const v = JSON.parse(Deno.readTextFileSync(new URL("package.json", PACKAGE))).version;
    version = typeof v === "string" ? v : null;
  } catch {
    version = null;
  }
  return version;
}

/**
 * Copy plotly.min.js into `dir` (created if needed) unless an identical-sized copy is there already.
 * Returns the copy's path, or null when the npm package is not installed (nothing is written then).
 *
 * @example
 * ```ts
 * import { copyPlotly } from "./mod.ts";
 * const dir = Deno.makeTempDirSync();
 * copyPlotly(dir); // dir/plotly.min.js
 * Deno.removeSync(dir, { recursive: true });
 * ```
 */
export function copyPlotly(dir: string): string | null {
  const src = plotlyPath();
  if (!src) return null;
  const dest = join(dir, PLOTLY_FILE);
  Deno.mkdirSync(dir, { recursive: true });
  let same = false;
  try {
    same = Deno.statSync(dest).size === Deno.statSync(src).size;
  } catch { /* no copy yet */ }
  if (!same) Deno.copyFileSync(src, dest);
  return dest;
}

/**
 * What a kernelspec directory needs beside kernel.json: the logos, and plotly.min.js for the figures' HTML
 * outputs. Returns the files written (without plotly.min.js when plotly.js is not installed: figures then
 * fall back to the CDN, else to a line of text).
 *
 * @example
 * ```ts
 * import { installKernelAssets } from "./mod.ts";
 * const spec = Deno.makeTempDirSync();
 * installKernelAssets(spec); // [spec/logo-32x32.png, spec/logo-64x64.png, spec/plotly.min.js]
 * Deno.removeSync(spec, { recursive: true });
 * ```
 */
export function installKernelAssets(specDir: string): string[] {
  Deno.mkdirSync(specDir, { recursive: true });
  const written = LOGO_FILES.map((logo) => {
    const dest = join(specDir, logo);
    Deno.copyFileSync(new URL(`./${logo}`, import.meta.url), dest);
    return dest;
  });
  const p = copyPlotly(specDir);
  return p ? [...written, p] : written;
}
