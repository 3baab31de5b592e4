/**
 * Rewrites a TypeScript cell into a script the worker evaluates, with REPL semantics:
 *
 * - top-level `const`, `let`, `var` become assignments to globals (`const x: T = 1` → `;(x      = 1)`),
 *   so later cells see them and may declare them again;
 * - top-level `function`, `class`, `enum` and `namespace` keep their declaration and are copied to a
 *   global (functions in a prologue, since they hoist; the others after their declaration);
 * - `import` lines become `await __sl_import(...)` (relative paths resolved against the kernel's cwd),
 *   so imported names persist too; `import(...)` calls become `__sl_import(...)` (relative paths resolved
 *   against the executor's cwd when they run) and `import.meta` becomes `__sl_meta`: a script has neither;
 * - the last expression statement is wrapped in `__sl_r((...))`, which records the cell's result;
 * - every loop body starts with `__sl_ck();`, which throws when an interrupt was requested.
 *
 * {@link rewriteCell} does only that: its edits never add or remove a newline, and `mapPosition` undoes the
 * column shifts they cause. {@link compileCell} then wraps the rewritten text in an async arrow function
 * (top-level await) and strips its types with TypeScript's `transpileModule`, keeping the source map: the
 * worker runs the result with an indirect eval, so no cell is ever a module (Deno never unloads a module:
 * each one cost the kernel memory and made the next dynamic import slower, issue #16). Its `mapPosition`
 * goes back through the source map and then through the rewrite to the cell's own line and column.
 *
 * @module
 */
import ts from "typescript";

/** A replacement of original text [pos, end) by `text`. */
interface Edit {
  pos: number;
  end: number;
  text: string;
  /** Order among edits at the same position (lower first). */
  order: number;
}

/** A successfully rewritten cell. */
export interface Rewritten {
  ok: true;
  /** The module text the worker imports. */
  code: string;
  /** Whether the cell ends in an expression whose value is the cell's result. */
  hasResult: boolean;
  /** Names the cell declares at top level. */
  declared: string[];
  /** Map a 1-based (line, column) in `code` to the cell's own 1-based (line, column). */
  mapPosition(line: number, column: number): { line: number; column: number };
}

/** A cell that does not parse. */
export interface SyntaxFailure {
  ok: false;
  message: string;
  line: number;
  column: number;
}

/** Names of the helpers the rewritten code calls (defined by the worker on globalThis). */
export const HELPERS = [
  "__sl_decl",
  "__sl_set",
  "__sl_import",
  "__sl_meta",
  "__sl_r",
  "__sl_ck",
  "__sl_aw",
] as const;

/** Parse a cell as TypeScript. */
export function parse(src: string): ts.SourceFile {
  return ts.createSourceFile("cell.ts", src, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
}

/** Syntax errors of a parsed cell, with 0-based positions. */
export function syntaxErrors(sf: ts.SourceFile): { message: string; start: number }[] {
  // parseDiagnostics is internal but stable across TypeScript 4.x/5.x; it is what the compiler reports.
  const diags = (sf as unknown as { parseDiagnostics: ts.Diagnostic[] }).parseDiagnostics ?? [];
  return diags.map((d) => ({
    message: ts.flattenDiagnosticMessageText(d.messageText, "\n"),
    start: d.start ?? 0,
  }));
}

/** A cell that is exactly an object literal (`{a: 1}`) is shown as one, as in Deno's REPL. */
function looksLikeObjectLiteral(src: string): boolean {
  const t = src.trim();
  if (!t.startsWith("{") || !(t.endsWith("}") || t.endsWith("};"))) return false;
  const sf = parse(`(${src.replace(/;\s*$/, "")}\n)`);
  if (syntaxErrors(sf).length) return false;
  const s = sf.statements;
  return s.length === 1 && ts.isExpressionStatement(s[0]) && ts.isParenthesizedExpression(s[0].expression) &&
    ts.isObjectLiteralExpression(s[0].expression.expression);
}

/** Replace every character but newlines with spaces (keeps lines and columns). */
function blank(s: string): string {
  return s.replace(/[^\n\r]/g, " ");
}

/** Identifiers bound by a declaration name (a plain name or a destructuring pattern). */
function boundNames(name: ts.BindingName, out: string[]): void {
  if (ts.isIdentifier(name)) out.push(name.text);
  else {
    for (const el of name.elements) {
      if (ts.isBindingElement(el)) boundNames(el.name, out);
    }
  }
}

function hasModifier(node: ts.Node, kind: ts.SyntaxKind): boolean {
  const mods = ts.canHaveModifiers(node) ? ts.getModifiers(node) : undefined;
  return !!mods?.some((m) => m.kind === kind);
}

/**
 * Rewrite a cell. `resolveSpecifier` turns an import specifier into what the worker should import
 * (relative paths become file URLs).
 */
export function rewriteCell(
  source: string,
  resolveSpecifier: (spec: string) => string = (s) => s,
): Rewritten | SyntaxFailure {
  const wrapped = looksLikeObjectLiteral(source);
  const src = wrapped ? `(${source.replace(/;(\s*)$/, "$1")})` : source;
  const base = wrapped ? 1 : 0;
  const sf = parse(src);
  const errs = syntaxErrors(sf);
  if (errs.length) {
    const pos = Math.max(0, errs[0].start - base);
    const lc = parse(source).getLineAndCharacterOfPosition(Math.min(pos, source.length));
    return { ok: false, message: errs[0].message, line: lc.line + 1, column: lc.character + 1 };
  }

  const edits: Edit[] = [];
  let order = 0;
  const replace = (pos: number, end: number, text: string) => edits.push({ pos, end, text, order: order++ });
  const insert = (pos: number, text: string) => replace(pos, pos, text);
  const declared: string[] = [];
  const assigned: string[] = []; // var/let/const names: must exist as globals before assignment
  const prologue: string[] = [];
  let importCount = 0;

  // Last statement that can produce a value (type-only and empty statements do not count).
  const valueStatements = sf.statements.filter((s) =>
    !ts.isEmptyStatement(s) && !ts.isInterfaceDeclaration(s) && !ts.isTypeAliasDeclaration(s)
  );
  const last = valueStatements[valueStatements.length - 1];
  let hasResult = false;
  const endsWithSemicolon = (s: ts.Node) => src.slice(s.getStart(sf), s.end).trimEnd().endsWith(";");

  for (const s of sf.statements) {
    if (hasModifier(s, ts.SyntaxKind.DeclareKeyword)) continue;
    // `export` means nothing in a cell: blank it (and `default` after it) and treat the declaration.
    const mods = ts.canHaveModifiers(s) ? ts.getModifiers(s) : undefined;
    for (const m of mods ?? []) {
      if (m.kind === ts.SyntaxKind.ExportKeyword || m.kind === ts.SyntaxKind.DefaultKeyword) {
        replace(m.getStart(sf), m.end, blank(m.getText(sf)));
      }
    }

    if (ts.isVariableStatement(s)) {
      const list = s.declarationList;
      const flags = list.flags;
      // NodeFlags: Let = 1, Const = 2, Using = 4, AwaitUsing = Const | Using.
      const scoped = flags & ts.NodeFlags.BlockScoped;
      if (scoped & ts.NodeFlags.Using) continue; // disposal needs a real scope
      const isVar = scoped === 0;
      const kwStart = list.getStart(sf);
      const kw = isVar ? "var" : scoped === ts.NodeFlags.Const ? "const" : "let";
      replace(kwStart, kwStart + kw.length, ";(".padEnd(kw.length, " "));
      for (const d of list.declarations) {
        const names: string[] = [];
        boundNames(d.name, names);
        declared.push(...names);
        assigned.push(...names);
        // Drop `!` and `: Type`, which are not valid in an assignment.
        const typeEnd = d.type ? d.type.end : d.exclamationToken ? d.exclamationToken.end : d.name.end;
        if (typeEnd > d.name.end) replace(d.name.end, typeEnd, blank(src.slice(d.name.end, typeEnd)));
        if (!d.initializer && !isVar) insert(typeEnd, " = undefined");
      }
      insert(list.end, endsWithSemicolon(s) ? ")" : ");");
      continue;
    }

    if (ts.isFunctionDeclaration(s) && s.name && s.body) {
      declared.push(s.name.text);
      prologue.push(`__sl_set(${JSON.stringify(s.name.text)}, ${s.name.text});`);
    } else if (
      (ts.isClassDeclaration(s) && s.name) ||
      (ts.isEnumDeclaration(s) && !hasModifier(s, ts.SyntaxKind.ConstKeyword)) ||
      (ts.isModuleDeclaration(s) && ts.isIdentifier(s.name) && s.body)
    ) {
      const name = (s as ts.ClassDeclaration | ts.EnumDeclaration | ts.ModuleDeclaration).name!.getText(sf);
      declared.push(name);
      insert(s.end, `;__sl_set(${JSON.stringify(name)}, ${name});`);
    } else if (ts.isImportDeclaration(s)) {
      const clause = s.importClause;
      const text = s.getText(sf);
      const start = s.getStart(sf);
      if (clause?.isTypeOnly) {
        replace(start, s.end, blank(text));
        continue;
      }
      const spec = (s.moduleSpecifier as ts.StringLiteral).text;
      const attrs = s.attributes
        ? `, { with: ${s.attributes.getText(sf).replace(/^(with|assert)\s*/, "")} }`
        : "";
      const v = `__sl_m${importCount++}`;
      let code = `const ${v} = await __sl_import(${JSON.stringify(resolveSpecifier(spec))}${attrs});`;
      if (clause?.name) {
        declared.push(clause.name.text);
        code += `__sl_set(${JSON.stringify(clause.name.text)}, ${v}.default);`;
      }
      const nb = clause?.namedBindings;
      if (nb && ts.isNamespaceImport(nb)) {
        declared.push(nb.name.text);
        code += `__sl_set(${JSON.stringify(nb.name.text)}, ${v});`;
      } else if (nb && ts.isNamedImports(nb)) {
        for (const el of nb.elements) {
          if (el.isTypeOnly) continue;
          const imported = (el.propertyName ?? el.name).text;
          declared.push(el.name.text);
          code += `__sl_set(${JSON.stringify(el.name.text)}, ${v}[${JSON.stringify(imported)}]);`;
        }
      }
      const newlines = text.split("\n").length - 1;
      replace(start, s.end, code + "\n".repeat(newlines));
      continue;
    } else if (ts.isExportDeclaration(s)) {
      replace(s.getStart(sf), s.end, blank(s.getText(sf)));
      continue;
    } else if (ts.isExportAssignment(s)) {
      // `export default expr` → `expr`
      replace(
        s.getStart(sf),
        s.expression.getStart(sf),
        blank(src.slice(s.getStart(sf), s.expression.getStart(sf))),
      );
      if (s === last) {
        insert(s.expression.getStart(sf), "__sl_r((");
        insert(s.expression.end, "))");
        hasResult = true;
      }
      continue;
    }

    if (s === last && ts.isExpressionStatement(s)) {
      insert(s.expression.getStart(sf), "__sl_r((");
      insert(s.expression.end, "))");
      hasResult = true;
    }
  }

  // Interrupt checks at the top of every loop body, at any depth.
  const visit = (node: ts.Node): void => {
    if (
      ts.isForStatement(node) || ts.isForInStatement(node) || ts.isForOfStatement(node) ||
      ts.isWhileStatement(node) || ts.isDoStatement(node)
    ) {
      const body = node.statement;
      if (ts.isBlock(body)) insert(body.getStart(sf) + 1, "__sl_ck();");
      else {
        insert(body.getStart(sf), "{__sl_ck();");
        insert(body.end, "}");
      }
    }
    // Every awaited value goes through `__sl_aw`, which notes where the cell waits: an interrupt that
    // ends the wait then points at this line, not at the worker's message handler.
    if (ts.isAwaitExpression(node)) {
      insert(node.expression.getStart(sf), "__sl_aw(");
      insert(node.expression.end, ")");
    }
    // A script has no `import.meta` and its `import()` resolves against the worker's own file: both go
    // through the worker's helpers (relative specifiers against the cwd, as for `import` lines).
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      replace(node.expression.getStart(sf), node.expression.end, "__sl_import");
    }
    if (ts.isMetaProperty(node) && node.keywordToken === ts.SyntaxKind.ImportKeyword) {
      replace(node.getStart(sf), node.end, "__sl_meta");
      return;
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);

  let head = "";
  if (assigned.length) head += `__sl_decl(${JSON.stringify([...new Set(assigned)])});`;
  head += prologue.join("");
  if (head) edits.push({ pos: 0, end: 0, text: head, order: -1 });

  // Apply edits: by position, then in the order they were made (outer wrappers before inner ones).
  edits.sort((a, b) => a.pos - b.pos || a.order - b.order);
  let code = "";
  let at = 0;
  for (const e of edits) {
    if (e.pos < at) continue; // overlapping edit (cannot happen for well-formed input); keep the first
    code += src.slice(at, e.pos) + e.text;
    at = e.end;
  }
  code += src.slice(at);

  const genLineStarts = lineStarts(code);
  const origLineStarts = lineStarts(source);
  const mapPosition = (line: number, column: number) => {
    const g = (genLineStarts[line - 1] ?? code.length) + column - 1;
    // Walk the edits: delta = generated - original offset before the current edit.
    let delta = 0;
    let orig = -1;
    for (const e of edits) {
      const gs = e.pos + delta;
      if (g < gs) break;
      if (g < gs + e.text.length) {
        orig = e.pos;
        break;
      }
      delta += e.text.length - (e.end - e.pos);
    }
    if (orig < 0) orig = g - delta;
    orig = Math.min(Math.max(0, orig - base), source.length);
    let l = 0;
    while (l + 1 < origLineStarts.length && origLineStarts[l + 1] <= orig) l++;
    return { line: l + 1, column: orig - origLineStarts[l] + 1 };
  };

  return { ok: true, code, hasResult, declared: [...new Set(declared)], mapPosition };
}

/** A cell compiled to a script: {@link rewriteCell}'s text, wrapped in an async function, types stripped. */
export interface Compiled {
  ok: true;
  /** JavaScript for an indirect eval; its value is the promise of the cell's end. */
  script: string;
  /** Whether the cell ends in an expression whose value is the cell's result. */
  hasResult: boolean;
  /** Names the cell declares at top level. */
  declared: string[];
  /**
   * Map a 1-based (line, column) in `script` to the cell's own 1-based (line, column); null for a position
   * in the wrapper (the `"use strict"` line, the call of the async function) or in TypeScript's helpers.
   */
  mapPosition(line: number, column: number): { line: number; column: number } | null;
}

/** Before and after the rewritten cell (the head is one line of its own, so cell line N is line N + 1). */
const WRAP_HEAD = '"use strict";(async () => {\n';
const WRAP_TAIL = "\n})()";

/**
 * What `transpileModule` emits: ES2024 keeps every syntax V8 runs natively (async, classes, private fields)
 * and lowers what it does not: TC39 decorators and `using` (helpers emitted at the script's top).
 */
const COMPILER_OPTIONS: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2024,
  module: ts.ModuleKind.ESNext,
  sourceMap: true,
  inlineSources: false,
  removeComments: false,
};

/** Rewrite a cell ({@link rewriteCell}) and compile it to a script the worker runs with an indirect eval. */
export function compileCell(
  source: string,
  resolveSpecifier: (spec: string) => string = (s) => s,
): Compiled | SyntaxFailure {
  const rw = rewriteCell(source, resolveSpecifier);
  if (!rw.ok) return rw;
  const wrapped = WRAP_HEAD + rw.code + WRAP_TAIL;
  const out = ts.transpileModule(wrapped, { compilerOptions: COMPILER_OPTIONS, fileName: "cell.ts" });
  const script = out.outputText.replace(/\n\/\/# sourceMappingURL=[^\n]*\s*$/, "\n");
  // Decoded when a traceback needs it (the kernel keeps the last 1,000 cells' maps): the string is compact.
  const mappings = (JSON.parse(out.sourceMapText ?? "{}") as { mappings?: string }).mappings ?? "";
  let map: [number, number, number][][] | undefined;
  let wrappedLines: string[] | undefined;
  const mapPosition = (line: number, column: number) => {
    map ??= decodeMappings(mappings);
    wrappedLines ??= wrapped.split("\n");
    const codeLines = wrappedLines.length - 2;
    const segs = map[line - 1];
    if (!segs?.length) return null;
    // The last segment at or before the column; within a segment the text is the source's own.
    let i = 0;
    while (i + 1 < segs.length && segs[i + 1][0] <= column - 1) i++;
    const [genCol, srcLine, srcCol] = segs[i];
    if (srcLine < 1 || srcLine > codeLines) return null;
    const delta = Math.max(0, column - 1 - genCol);
    const col = Math.min(srcCol + delta, wrappedLines[srcLine].length);
    return rw.mapPosition(srcLine, col + 1);
  };
  return { ok: true, script, hasResult: rw.hasResult, declared: rw.declared, mapPosition };
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/**
 * A source map's `mappings` as, for each generated line, its segments [generated column, source line,
 * source column] (0-based, in order of column); segments without a source are left out.
 */
export function decodeMappings(mappings: string): [number, number, number][][] {
  const lines: [number, number, number][][] = [];
  // One source (the wrapped cell) and no names are used: their deltas (fields 2 and 5) are skipped.
  let srcLine = 0, srcCol = 0;
  for (const lineText of mappings.split(";")) {
    const segs: [number, number, number][] = [];
    let genCol = 0;
    for (const seg of lineText.split(",")) {
      if (!seg) continue;
      const v: number[] = [];
      let value = 0, shift = 0;
      for (const ch of seg) {
        const d = B64.indexOf(ch);
        value += (d & 31) << shift;
        if (d & 32) shift += 5;
        else {
          v.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      genCol += v[0];
      if (v.length >= 4) {
        srcLine += v[2];
        srcCol += v[3];
        segs.push([genCol, srcLine, srcCol]);
      }
    }
    lines.push(segs);
  }
  return lines;
}

function lineStarts(s: string): number[] {
  const out = [0];
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) === 10) out.push(i + 1);
  return out;
}

/**
 * is_complete: "complete", "incomplete" (an open bracket, string or template at the end) or "invalid".
 * The indent for an incomplete cell is two spaces per open bracket.
 */
export function isComplete(code: string): { status: "complete" | "incomplete" | "invalid"; indent?: string } {
  if (code.trim() === "") return { status: "complete" };
  const scanner = ts.createScanner(ts.ScriptTarget.Latest, false, ts.LanguageVariant.Standard, code);
  const stack: number[] = [];
  const open = new Map([[ts.SyntaxKind.OpenBraceToken, ts.SyntaxKind.CloseBraceToken], [
    ts.SyntaxKind.OpenParenToken,
    ts.SyntaxKind.CloseParenToken,
  ], [ts.SyntaxKind.OpenBracketToken, ts.SyntaxKind.CloseBracketToken]]);
  let unterminated = false;
  let lastToken = ts.SyntaxKind.Unknown;
  for (let t = scanner.scan(); t !== ts.SyntaxKind.EndOfFileToken; t = scanner.scan()) {
    if (scanner.isUnterminated()) unterminated = true;
    if (t === ts.SyntaxKind.TemplateHead) stack.push(-1); // `...${ : closed by a `}` rescanned as template
    else if (t === ts.SyntaxKind.CloseBraceToken && stack[stack.length - 1] === -1) {
      const r = scanner.reScanTemplateToken(false);
      if (scanner.isUnterminated()) unterminated = true;
      if (r === ts.SyntaxKind.TemplateTail) stack.pop();
      continue;
    } else if (open.has(t)) stack.push(open.get(t)!);
    else if (
      t === ts.SyntaxKind.CloseBraceToken || t === ts.SyntaxKind.CloseParenToken ||
      t === ts.SyntaxKind.CloseBracketToken
    ) {
      if (stack.pop() !== t) return { status: "invalid" };
    }
    if (t !== ts.SyntaxKind.WhitespaceTrivia && t !== ts.SyntaxKind.NewLineTrivia) lastToken = t;
  }
  if (unterminated || stack.length) return { status: "incomplete", indent: "  ".repeat(stack.length) };
  // A trailing binary operator or comma means more is coming.
  if (
    lastToken === ts.SyntaxKind.CommaToken || lastToken === ts.SyntaxKind.EqualsToken ||
    lastToken === ts.SyntaxKind.PlusToken || lastToken === ts.SyntaxKind.EqualsGreaterThanToken
  ) return { status: "incomplete", indent: "" };
  return syntaxErrors(parse(code)).length ? { status: "invalid" } : { status: "complete" };
}
