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
