/**
 * A small Chrome DevTools Protocol client for tests: starts headless Chromium, opens pages, evaluates
 * JavaScript in them, and collects what would show in the console (console calls, uncaught exceptions,
 * browser log entries such as failed loads).
 *
 * Only Deno's built-in WebSocket and the `chromium` binary are needed. One browser process per `launch`;
 * `close` ends it and removes its profile directory, so call it in `finally`.
 *
 * ```ts
 * const browser = await launch(); // throws if chromium is missing: check chromiumPath() first
 * try {
 *   const page = await browser.newPage();
 *   await page.goto("file:///tmp/report.html");
 *   const n = await page.evaluate("document.querySelectorAll('table').length");
 *   const bad = page.problems(); // console errors, exceptions, error log entries
 * } finally {
 *   await browser.close();
 * }
 * ```
 *
 * @module
 */

/** One thing the page reported: a console call, an uncaught exception or a browser log entry. */
export interface ConsoleEntry {
  /** "console" (console.*), "exception" (uncaught, or an unhandled rejection), "log" (Log.entryAdded). */
  source: "console" | "exception" | "log";
  /** console: log, warning, error, ...; exception: "error"; log: verbose, info, warning, error. */
  level: string;
  text: string;
  url?: string;
}

// deno-lint-ignore no-explicit-any -- CDP results and event parameters are protocol JSON
type Json = any;

/** The Chromium binary: $CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH. */
export function chromiumPath(): string | null {
  const env = Deno.env.get("CHROMIUM");
  const names = env ? [env] : ["chromium", "chromium-browser", "google-chrome"];
  for (const n of names) {
    const dirs = n.includes("/") ? [""] : (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
    for (const d of dirs) {
      const p = d ? `${d}/${n}` : n;
      try {
        if (Deno.statSync(p).isFile) return p;
      } catch { /* not here */ }
    }
  }
  return null;
}

/** A connection to one page (a CDP session on a target). */
export class Page {
  private entries: ConsoleEntry[] = [];
  private listeners = new Map<string, Set<(params: Json) => void>>();

  constructor(private browser: Browser, readonly sessionId: string, readonly targetId: string) {}

  /** Send a CDP command to this page; resolves with its result, rejects with the protocol's error. */
  send(method: string, params: Record<string, unknown> = {}): Promise<Json> {
    return this.browser.send(method, params, this.sessionId);
  }

  /** Call `fn` for each event `method` (e.g. "Network.requestWillBeSent") of this page; returns an unsubscribe. */
  on(method: string, fn: (params: Json) => void): () => void {
    const set = this.listeners.get(method) ?? new Set();
    this.listeners.set(method, set);
    set.add(fn);
    return () => set.delete(fn);
  }

  /** @internal the browser routes this session's events here. */
  dispatch(method: string, params: Json): void {
    if (method === "Runtime.consoleAPICalled") {
      this.entries.push({
        source: "console",
        level: params.type,
        text: (params.args ?? []).map((a: Json) => a.value ?? a.description ?? a.type).join(" "),
        url: params.stackTrace?.callFrames?.[0]?.url,
      });
    } else if (method === "Runtime.exceptionThrown") {
      const d = params.exceptionDetails;
      this.entries.push({
        source: "exception",
        level: "error",
        text: d.exception?.description ?? d.text,
        url: d.url,
      });
    } else if (method === "Log.entryAdded") {
      const e = params.entry;
      this.entries.push({ source: "log", level: e.level, text: e.text, url: e.url });
    }
    for (const fn of this.listeners.get(method) ?? []) fn(params);
  }

  /** Everything reported so far, in order. */
  console(): ConsoleEntry[] {
    return [...this.entries];
  }

  /** What a test usually forbids: console errors, uncaught exceptions, error log entries. */
  problems(): ConsoleEntry[] {
    return this.entries.filter((e) => e.level === "error" || e.level === "assert");
  }

  /** Load `url` and wait for its load event (at most `timeoutMs`, default 30 s). */
  async goto(url: string, timeoutMs = 30_000): Promise<void> {
    const loaded = this.once("Page.loadEventFired", timeoutMs);
    const r = await this.send("Page.navigate", { url });
    if (r.errorText) throw new Error(`cdp: cannot load ${url}: ${r.errorText}`);
    await loaded;
  }

  /** Resolve with the next event `method`'s params; reject after `timeoutMs`. */
  once(method: string, timeoutMs = 30_000): Promise<Json> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`cdp: no ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on(method, (p) => {
        clearTimeout(timer);
        off();
        resolve(p);
      });
    });
  }

  /**
   * Evaluate a JavaScript expression in the page and return its value (by value: JSON-able results). A
   * promise is awaited. A thrown error rejects with its description.
   */
  async evaluate<T = Json>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
    if (r.exceptionDetails) {
      const d = r.exceptionDetails;
      throw new Error(`cdp: evaluate failed: ${d.exception?.description ?? d.text}`);
    }
    return r.result.value as T;
  }

  /** Evaluate `expression` every 100 ms until it is truthy; returns that value, throws after `timeoutMs`. */
  async waitFor<T = Json>(expression: string, timeoutMs = 30_000): Promise<T> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await this.evaluate<T>(expression);
      if (v) return v;
      if (Date.now() > end) throw new Error(`cdp: still falsy after ${timeoutMs} ms: ${expression}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A headless Chromium process and the browser-level CDP connection to it. */
export class Browser {
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: Json) => void; reject: (e: Error) => void }>();
  private pages = new Map<string, Page>();
  private closed = false;

  private constructor(
    private ws: WebSocket,
    private child: Deno.ChildProcess,
    private profile: string,
    /** The browser's stderr so far (Chromium's own log lines). */
    readonly stderr: string[],
  ) {
    ws.onmessage = (ev) => this.receive(JSON.parse(String(ev.data)));
    ws.onclose = () => this.failPending("cdp: the browser connection closed");
  }

  /**
   * Start headless Chromium with a throwaway profile and connect to it. Throws if the binary is missing
   * or does not announce its DevTools address within `timeoutMs` (default 30 s).
   */
  static async launch(
    opts: { executable?: string; args?: string[]; timeoutMs?: number } = {},
  ): Promise<Browser> {
    const exe = opts.executable ?? chromiumPath();
    if (!exe) throw new Error("cdp: chromium not found (install Debian's chromium or set CHROMIUM)");
    const profile = Deno.makeTempDirSync({ prefix: "seqlab-chromium-" });
    const child = new Deno.Command(exe, {
      args: [
        "--headless=new",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "--no-sandbox", // CI runs as root, where Chromium's sandbox refuses to start
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        ...(opts.args ?? []),
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr: string[] = [];
    const timeoutMs = opts.timeoutMs ?? 30_000;
    let wsUrl: string | null = null;
    try {
      wsUrl = await readDevToolsUrl(child, stderr, timeoutMs);
      const ws = new WebSocket(wsUrl);
      await new Promise<void>((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error(`cdp: cannot connect to ${wsUrl}`));
      });
      return new Browser(ws, child, profile, stderr);
    } catch (e) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      Deno.removeSync(profile, { recursive: true });
      throw new Error(`${(e as Error).message}\n${stderr.join("").slice(-2000)}`);
    }
  }

  /** Send a CDP command (to the browser, or to a page's session); resolves with its result. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Json> {
    if (this.closed) return Promise.reject(new Error(`cdp: ${method} after close`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  /** Open a new tab on about:blank, with Runtime, Log and Page events on (console collection starts now). */
  async newPage(): Promise<Page> {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    const page = new Page(this, sessionId, targetId);
    this.pages.set(sessionId, page);
    await Promise.all([page.send("Runtime.enable"), page.send("Log.enable"), page.send("Page.enable")]);
    return page;
  }

  /** Close the browser, kill it if it lingers, and remove its profile. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    const bye = this.send("Browser.close").catch(() => {});
    this.closed = true;
    await Promise.race([bye, new Promise((r) => setTimeout(r, 2000))]);
    try {
      this.ws.close();
    } catch { /* closed by the browser */ }
    const exited = await Promise.race([this.child.status.then(() => true), delay(3000).then(() => false)]);
    if (!exited) {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone meanwhile */ }
      await this.child.status;
    }
    this.failPending("cdp: browser closed");
    try {
      Deno.removeSync(this.profile, { recursive: true });
    } catch { /* Chromium may still be writing a crash report: leave it */ }
  }

  private receive(msg: Json): void {
    if (typeof msg.id === "number") {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new Error(`cdp: ${msg.error.message} (${msg.error.code})`));
      else p.resolve(msg.result ?? {});
    } else if (msg.sessionId) this.pages.get(msg.sessionId)?.dispatch(msg.method, msg.params ?? {});
  }

  private failPending(why: string): void {
    for (const p of this.pending.values()) p.reject(new Error(why));
    this.pending.clear();
  }
}

/** `Browser.launch`, as a function. */
export const launch: typeof Browser.launch = (opts) => Browser.launch(opts);

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Read Chromium's stderr until "DevTools listening on ws://..."; keep reading it into `sink` afterwards. */
async function readDevToolsUrl(child: Deno.ChildProcess, sink: string[], timeoutMs: number): Promise<string> {
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`cdp: chromium did not print its DevTools URL within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    for (;;) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) throw new Error("cdp: chromium exited before printing its DevTools URL");
      seen += value;
      sink.push(value);
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) {
        // Keep draining stderr (a full pipe would block the browser), into `sink`.
        (async () => {
          try {
            for (;;) {
              const r = await reader.read();
              if (r.done) break;
              sink.push(r.value);
            }
          } catch { /* process gone */ }
        })();
        return m[1];
      }
    }
  } finally {
    clearTimeout(timer);
  }
}
