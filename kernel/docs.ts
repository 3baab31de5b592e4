/**
 * Documentation for inspect requests: JSDoc and declared signatures of top-level names, from the
 * cells run so far and from the project's mod.ts (following its `export ... from` re-exports).
 *
 * TypeScript is loaded lazily, so the kernel starts without waiting for it.
 *
 * @module
 */
import type ts from "typescript";

/** What inspect shows for a declared name. */
export interface DocEntry {
  /** Declaration head with types, e.g. `function matmul(a: Tensor, b: Tensor): Tensor`. */
  signature?: string;
  /** The JSDoc text, tags included. */
  doc?: string;
}

/** Docs of top-level declarations, later cells overriding earlier ones. */
export class DocIndex {
  private entries = new Map<string, DocEntry>();
  private pendingCells: string[] = [];
  private libraryLoaded = false;

  constructor(private modPath = new URL("../mod.ts", import.meta.url)) {}

  /**
   * Remember a cell's source; it is parsed at the next lookup, or once 64 cells wait, so that a long
   * session keeps the declarations it made, not the code of every cell it ran.
   */
  addCell(code: string): void {
    this.pendingCells.push(code);
    if (this.pendingCells.length >= 64) void this.absorb().catch(() => {});
  }

  /** Parses the waiting cells into the index. */
  private async absorb(): Promise<void> {
    const t = (await import("typescript")).default;
    for (const c of this.pendingCells.splice(0)) collect(t, c, this.entries, () => true);
  }

  /** Docs for a name, or undefined. */
  async lookup(name: string): Promise<DocEntry | undefined> {
    const t = (await import("typescript")).default;
    if (!this.libraryLoaded) {
      this.libraryLoaded = true;
      try {
        this.loadModule(t, this.modPath, new Set(), 0);
      } catch { /* no mod.ts yet */ }
    }
    for (const c of this.pendingCells.splice(0)) collect(t, c, this.entries, () => true);
    return this.entries.get(name);
  }

  private loadModule(t: typeof ts, url: URL, seen: Set<string>, depth: number): void {
    if (seen.has(url.href) || depth > 6) return;
    seen.add(url.href);
    let src: string;
    try {
      src = Deno.readTextFileSync(url);
    } catch {
      return;
    }
    const exported = (s: ts.Statement) =>
      !!(t.canHaveModifiers(s) && t.getModifiers(s)?.some((m) => m.kind === t.SyntaxKind.ExportKeyword));
    const sf = collect(t, src, this.entries, exported, true);
    for (const s of sf.statements) {
      if (t.isExportDeclaration(s) && s.moduleSpecifier && t.isStringLiteral(s.moduleSpecifier)) {
        const spec = s.moduleSpecifier.text;
        if (spec.startsWith(".")) this.loadModule(t, new URL(spec, url), seen, depth + 1);
      }
    }
  }
}

function jsdocOf(t: typeof ts, src: string, node: ts.Node): string | undefined {
  const ranges = t.getLeadingCommentRanges(src, node.pos) ?? [];
  const last = ranges.filter((r) => src.startsWith("/**", r.pos)).pop();
  if (!last) return undefined;
  return src.slice(last.pos + 3, last.end - 2).split("\n").map((l) => l.replace(/^\s*\* ?/, "")).join("\n")
    .trim();
}

function collect(
  t: typeof ts,
  src: string,
  into: Map<string, DocEntry>,
  keep: (s: ts.Statement) => boolean,
  keepExisting = false,
): ts.SourceFile {
  const sf = t.createSourceFile("doc.ts", src, t.ScriptTarget.Latest, true, t.ScriptKind.TS);
  const put = (name: string, e: DocEntry) => {
    if (keepExisting && into.has(name)) return;
    into.set(name, e);
  };
  for (const s of sf.statements) {
    if (!keep(s)) continue;
    const doc = jsdocOf(t, src, s);
    if (t.isFunctionDeclaration(s) && s.name) {
      const end = s.body ? s.body.getStart(sf) : s.end;
      const head = src.slice(s.getStart(sf), end).replace(/^export\s+(default\s+)?/, "").replace(/\s+/g, " ")
        .trim();
      const prev = into.get(s.name.text);
      // Overloads: keep every signature.
      const signature = prev && !keepExisting && prev.signature && !s.body
        ? `${prev.signature}\n${head}`
        : head;
      put(s.name.text, { signature: signature.replace(/;$/, ""), doc: doc ?? prev?.doc });
    } else if (t.isClassDeclaration(s) && s.name) {
      put(s.name.text, { signature: `class ${s.name.text}`, doc });
    } else if (t.isVariableStatement(s)) {
      for (const d of s.declarationList.declarations) {
        if (!t.isIdentifier(d.name)) continue;
        const type = d.type ? `: ${d.type.getText(sf)}` : "";
        put(d.name.text, { signature: `${d.name.text}${type}`, doc });
      }
    } else if ((t.isInterfaceDeclaration(s) || t.isTypeAliasDeclaration(s)) && doc) {
      put(s.name.text, { signature: src.slice(s.getStart(sf), Math.min(s.end, s.getStart(sf) + 300)), doc });
    }
  }
  return sf;
}
