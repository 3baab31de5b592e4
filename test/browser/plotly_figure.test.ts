/**
 * A plotly figure's HTML output (kernel/display.ts) in headless Chromium, on pages laid out as a saved and
 * reloaded notebook shows it: each figure draws on its own (the second figure of a session, with the first
 * gone), plotly.js is fetched once per page from the kernelspec directory under the server's base URL
 * (Notebook 6's `data-base-url`, JupyterLab's `jupyter-config-data`), an output whose script runs before
 * it is attached (Notebook 6) still draws, and when plotly.js cannot be loaded the figure's text stays
 * visible with the reason.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type Browser, chromiumPath, launch } from "./cdp.ts";
import { plot, plotlyBundle } from "../../kernel/display.ts";
import { installKernelAssets } from "../../kernel/assets/mod.ts";

const CHROMIUM = chromiumPath();
const figure = (title: string) =>
  plotlyBundle(plot([{ type: "bar", x: [1, 2, 3], y: [3, 1, 2] }], { title: { text: title }, height: 300 }));

describe.skipIf(!CHROMIUM)(
  `${
    CHROMIUM ? "" : "[skipped: chromium not found; apt-get install chromium] "
  }plotly figure outputs in Chromium`,
  () => {
    // skipIf: this test needs a browser; CI installs Debian's chromium (.ci/run)
    let browser: Browser;
    let server: Deno.HttpServer;
    let base: string;
    const spec = Deno.makeTempDirSync({ prefix: "seqlab-kspec-assets-" });
    const pages = new Map<string, string>();
    const requests: string[] = [];

    beforeAll(async () => {
      const written = installKernelAssets(spec).filter((f) => f.endsWith("/plotly.min.js"));
      expect(written.length, "plotly.js-dist-min is installed").toBe(1);
      const lib = Deno.readFileSync(`${spec}/plotly.min.js`);
      server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
        const path = new URL(req.url).pathname;
        requests.push(path);
        if (/^(\/lab-base)?\/kernelspecs\/seqlab(-dev)?\/plotly\.min\.js$/.test(path)) {
          return new Response(lib, { headers: { "content-type": "text/javascript" } });
        }
        if (path === "/favicon.ico") return new Response(null, { status: 204 }); // not an error to report
        const page = pages.get(path);
        if (page) return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } });
        return new Response("not found", { status: 404 });
      });
      base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
      browser = await launch();
    }, 60_000);

    afterAll(async () => {
      await browser?.close();
      await server?.shutdown();
      Deno.removeSync(spec, { recursive: true });
    });

    /** Figures drawn: plotly put its SVG into the output's div. */
    const drawn =
      "[...document.querySelectorAll('.seqlab-plot')].filter((e) => e.querySelector('.main-svg')).length";

    test("Notebook 6 layout: the session's 2nd..4th figures alone, one plotly.js fetch, all drawn", async () => {
      figure("first, cleared before saving");
      const outputs = [figure("a"), figure("b"), figure("c")].map((b) =>
        `<div class="output">${b["text/html"]}</div>`
      );
      pages.set(
        "/nb6",
        `<!doctype html><html><head></head><body data-base-url="/">${outputs.join("")}</body></html>`,
      );
      const page = await browser.newPage();
      requests.length = 0;
      await page.goto(`${base}/nb6`);
      expect(await page.waitFor(`${drawn} === 3 && ${drawn}`, 30_000)).toBe(3);
      expect(requests.filter((r) => r.endsWith("plotly.min.js"))).toEqual([
        "/kernelspecs/seqlab/plotly.min.js",
      ]);
      expect(await page.evaluate("[...document.querySelectorAll('.gtitle')].map((t) => t.textContent)"))
        .toEqual(
          ["a", "b", "c"],
        );
      expect(page.problems()).toEqual([]);
    });

    test("Notebook 6 with the kernelspec installed under another name: its directory is asked first", async () => {
      const b = figure("renamed");
      pages.set(
        "/renamed",
        `<!doctype html><html><head><script>window.Jupyter = { notebook: { metadata: { kernelspec: ` +
          `{ name: "seqlab-dev" } } } };</script></head><body data-base-url="/">${
            b["text/html"]
          }</body></html>`,
      );
      const page = await browser.newPage();
      requests.length = 0;
      await page.goto(`${base}/renamed`);
      expect(await page.waitFor(drawn, 30_000)).toBe(1);
      expect(requests.filter((r) => r.endsWith("plotly.min.js"))).toEqual([
        "/kernelspecs/seqlab-dev/plotly.min.js",
      ]);
      expect(page.problems()).toEqual([]);
    });

    test("JupyterLab layout (base URL in jupyter-config-data), script run before the output is attached", async () => {
      const b = figure("late");
      // As Notebook 6's jQuery does: the scripts run while the output is detached, which is attached later.
      pages.set(
        "/lab",
        `<!doctype html><html><head><script id="jupyter-config-data" type="application/json">` +
          `{"baseUrl": "/lab-base/"}</script></head><body><script>
        const tmp = document.createElement("div");
        tmp.innerHTML = ${JSON.stringify(b["text/html"]).replace(/</g, "\\u003c")};
        for (const old of tmp.querySelectorAll("script")) {
          const s = document.createElement("script");
          s.text = old.text;
          document.head.appendChild(s).remove();
        }
        setTimeout(() => document.body.appendChild(tmp), 300);
      </script></body></html>`,
      );
      const page = await browser.newPage();
      requests.length = 0;
      await page.goto(`${base}/lab`);
      expect(await page.waitFor(drawn, 30_000)).toBe(1);
      expect(requests).toContain("/lab-base/kernelspecs/seqlab/plotly.min.js");
      expect(page.problems()).toEqual([]);
    });

    test("no plotly.js reachable: the figure's text stays visible, with the reason", async () => {
      const b = figure("offline");
      pages.set(
        "/missing",
        `<!doctype html><html><body data-base-url="/elsewhere/">${b["text/html"]}</body></html>`,
      );
      const page = await browser.newPage();
      await page.send("Network.enable");
      await page.send("Network.setBlockedURLs", { urls: ["*cdn.plot.ly*"] }); // as offline, whatever the CI has
      await page.goto(`${base}/missing`);
      const text = await page.waitFor<string>(
        "(document.querySelector('.seqlab-plot').textContent.match(/Not drawn.*/) || [''])[0]",
        30_000,
      );
      expect(text).toMatch(
        /^Not drawn: could not load plotly\.js from \/elsewhere\/kernelspecs\/seqlab\/plotly\.min\.js, https:\/\/cdn\.plot\.ly\/plotly-[\d.]+\.min\.js/,
      );
      expect(await page.evaluate("document.querySelector('.seqlab-plot').textContent")).toMatch(
        /^<plotly figure "offline": 1 trace\(s\): bar> Not drawn/,
      );
      expect(await page.evaluate("document.querySelector('.seqlab-plot').offsetHeight > 0")).toBe(true);
      expect(await page.evaluate(drawn)).toBe(0);
      // the failed loads are the only errors
      expect(
        page.problems().every((p) => /Failed to load resource|ERR_BLOCKED/.test(p.text)),
        JSON.stringify(page.problems()),
      )
        .toBe(true);
    });
  },
);
