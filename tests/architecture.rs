//! Module dependency rules, checked on the source text.
//!
//! ARCHITECTURE.md's "Dependency rules" table says which module may use which. These tests read
//! every file under `src/` (comments and literals skipped) for its `crate::…`, `super::…` and
//! `self::…` paths, paths through its `mod x;` children and through names it imported
//! (`use crate::io;` then `io::f()`), and check:
//!
//! - `module_imports_follow_the_architecture_table`: a file of top-level module `m` names
//!   another module `n` only if `m`'s row lists `n`, except `error`, which every module may use.
//!   `` `n` (only `A`) `` limits `m` to those items of `n`; other parenthesized words and names
//!   without backticks (crates) are notes. Every folder module needs a row and every module a
//!   row names must exist; a one-file module without a row (`device`) may use only `error`. The
//!   binary (`main.rs` and the modules it declares: `cli`) reaches the library only as
//!   `ttlora::…`, which the compiler keeps to the public API, so it may name any library module;
//!   the library may never name the binary's modules.
//! - `no_circles_between_files`: no files depend on each other in a circle. A path leads to the
//!   deepest file it names (`crate::a::b::X`: `src/a/b.rs` or `src/a/b/mod.rs`, else `src/a…`),
//!   on through `pub use` re-exports to the file that defines the item. A parent's `mod x;` and
//!   `pub use x::…` lines are a facade, not a dependency; anything else it uses of a child is.
//!
//! To fix a failure, change the import: move the shared item down into a file or module both
//! sides may use, or pass it in. If the architecture really changed, change the table in
//! ARCHITECTURE.md instead, in the same commit, saying why. The reading is textual: `#[cfg]` is
//! ignored (test code counts like any other) and `#[path]` attributes are not followed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use parser::{Kind, Parsed, Ref};

/// The library's name, by which the binary reaches it.
const LIB: &str = "ttlora";
/// The module every module may use without its row saying so.
const ERROR: &str = "error";

/// Reads the paths to the crate's own items out of Rust source.
mod parser {
    use std::collections::{BTreeMap, BTreeSet};

    /// Keywords after which an item's name follows (for glob re-exports).
    const DEFINES: [&str; 8] = [
        "fn", "struct", "enum", "trait", "type", "const", "static", "union",
    ];

    /// How a path was written: in a `use`, a `pub use` (or `pub(…) use`), or in code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Use,
        PubUse,
        Expr,
    }

    /// One path to an item or module of ours.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ref {
        /// Segments from the crate root (`["io", "read_json"]`).
        pub abs: Vec<String>,
        /// Whether it goes through the library's name (from the binary).
        pub external: bool,
        pub kind: Kind,
        /// The name a `use` brings in (`None` for a glob or `as _`).
        pub name: Option<String>,
        pub line: usize,
        /// The path as written.
        pub text: String,
    }

    /// What one file says: its `mod x;` children, the names it defines, its paths.
    #[derive(Debug, Default)]
    pub struct Parsed {
        pub mods: BTreeSet<String>,
        pub defs: BTreeSet<String>,
        pub refs: Vec<Ref>,
    }

    type Toks = [(String, usize)];

    fn is_ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    fn tok(toks: &Toks, k: usize) -> &str {
        toks.get(k).map_or("", |(s, _)| s)
    }

    /// The end of the string or char literal at `i`, if one starts there: `"…"`, `r#"…"#`,
    /// `br"…"`, `'x'`, `'\n'`; a lifetime (`'a`) is none, and `b` of `b"…"` lexes as a word.
    fn literal_end(c: &[char], i: usize) -> Option<usize> {
        let past = |from: usize, close: &[char]| {
            (from..c.len())
                .find(|&k| c[k..].starts_with(close))
                .map_or(c.len(), |k| k + close.len())
        };
        match c[i] {
            '"' => {
                let mut k = i + 1;
                while k < c.len() && c[k] != '"' {
                    k += if c[k] == '\\' { 2 } else { 1 };
                }
                Some(k + 1)
            }
            '\'' if c.get(i + 1) == Some(&'\\') => Some(past(i + 3, &['\''])),
            '\'' if c.get(i + 2) == Some(&'\'') => Some(i + 3),
            'b' | 'c' | 'r' if i == 0 || !is_ident(c[i - 1]) => {
                let r = i + usize::from(c[i] != 'r');
                let hashes = c.get(r + 1..)?.iter().take_while(|&&h| h == '#').count();
                let close = [vec!['"'], vec!['#'; hashes]].concat();
                let raw = c.get(r) == Some(&'r') && c.get(r + 1 + hashes) == Some(&'"');
                raw.then(|| past(r + 2 + hashes, &close))
            }
            _ => None,
        }
    }

    /// The tokens of `src` with their lines: words, `::` and single characters; comments,
    /// literals, numbers and whitespace are dropped.
    fn lex(src: &str) -> Vec<(String, usize)> {
        let c: Vec<char> = src.chars().collect();
        let at = |k: usize, s: [char; 2]| c[k.min(c.len())..].starts_with(&s);
        let (mut toks, mut line, mut i) = (Vec::new(), 1, 0);
        while i < c.len() {
            let start = i;
            if at(i, ['/', '/']) {
                i = (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len());
            } else if at(i, ['/', '*']) {
                let mut depth = 0;
                while i < c.len() && (depth > 0 || i == start) {
                    let step = [at(i, ['/', '*']), at(i, ['*', '/'])];
                    depth += i32::from(step[0]) - i32::from(step[1]);
                    i += if step.contains(&true) { 2 } else { 1 };
                }
            } else if let Some(end) = literal_end(&c, i) {
                i = end.min(c.len());
            } else if is_ident(c[i]) {
                i = (i..c.len()).find(|&k| !is_ident(c[k])).unwrap_or(c.len());
                if !c[start].is_ascii_digit() {
                    toks.push((c[start..i].iter().collect(), line));
                }
            } else {
                i += if at(i, [':', ':']) { 2 } else { 1 };
                if !c[start].is_whitespace() {
                    toks.push((c[start..i].iter().collect(), line));
                }
            }
            line += c[start..i].iter().filter(|&&ch| ch == '\n').count();
        }
        toks
    }

    /// Reads one file. `module` is its module path (`["io", "peft_lora"]`, `[]` for a crate
    /// root); `lib` is the library's name when the file belongs to the binary.
    pub fn parse(src: &str, module: &[String], lib: Option<&str>) -> Parsed {
        let toks = lex(src);
        let t = |k: usize| tok(&toks, k);
        let word = |k: usize| t(k).starts_with(is_ident);
        let (mut parsed, mut raw) = (Parsed::default(), Vec::new());
        // the module at the current token, and the brace depths its inline `mod x {` opened at
        let (mut here, mut opened, mut depth, mut pending) = (module.to_vec(), vec![], 0, None);
        let mut i = 0;
        while i < toks.len() {
            let line = toks[i].1;
            match t(i) {
                "{" => {
                    depth += 1;
                    if let Some(name) = pending.take() {
                        here.push(name);
                        opened.push(depth);
                    }
                }
                "}" => {
                    if opened.last() == Some(&depth) {
                        opened.pop();
                        here.pop();
                    }
                    depth -= 1;
                }
                "mod" if word(i + 1) && t(i + 2) == ";" && opened.is_empty() => {
                    parsed.mods.insert(t(i + 1).to_string());
                }
                "mod" if word(i + 1) && t(i + 2) == "{" => pending = Some(t(i + 1).to_string()),
                "use" => {
                    let kind = if is_pub(&toks, i) {
                        Kind::PubUse
                    } else {
                        Kind::Use
                    };
                    let mut trees = Vec::new();
                    i = use_tree(&toks, i + 1, &[], &mut trees);
                    raw.extend(
                        trees
                            .into_iter()
                            .map(|(segs, name)| (segs, here.clone(), line, kind, name)),
                    );
                    continue;
                }
                w if DEFINES.contains(&w) && word(i + 1) => {
                    parsed.defs.insert(t(i + 1).to_string());
                }
                w if word(i) && t(i + 1) == "::" && !matches!(t(i.wrapping_sub(1)), "::" | "$") => {
                    let mut segs = vec![w.to_string()];
                    while t(i + 1) == "::" && word(i + 2) {
                        segs.push(t(i + 2).to_string());
                        i += 2;
                    }
                    if segs.len() > 1 {
                        raw.push((segs, here.clone(), line, Kind::Expr, None));
                    }
                }
                _ => {}
            }
            i += 1;
        }
        // `use` paths first: the names they bring in may start the paths in code
        let (uses, exprs): (Vec<_>, Vec<_>) = raw.into_iter().partition(|r| r.3 != Kind::Expr);
        let mut aliases = BTreeMap::new();
        for (segs, here, line, kind, name) in uses.into_iter().chain(exprs) {
            let Some((external, abs)) = absolute(&segs, &here, module, &parsed.mods, &aliases, lib)
            else {
                continue;
            };
            if let Some(name) = &name {
                aliases.insert(name.clone(), (external, abs.clone()));
            }
            parsed.refs.push(Ref {
                abs,
                external,
                kind,
                name,
                line,
                text: segs.join("::"),
            });
        }
        parsed
    }

    /// A path as written in module `here` (of the file of `module`), from the crate root;
    /// `None` when it is not ours.
    fn absolute(
        segs: &[String],
        here: &[String],
        module: &[String],
        mods: &BTreeSet<String>,
        aliases: &BTreeMap<String, (bool, Vec<String>)>,
        lib: Option<&str>,
    ) -> Option<(bool, Vec<String>)> {
        let ups = segs.iter().take_while(|s| *s == "super").count();
        let (external, base, rest) = match segs[0].as_str() {
            "crate" => (false, vec![], &segs[1..]),
            "self" => (false, here.to_vec(), &segs[1..]),
            "super" => (
                false,
                here[..here.len().checked_sub(ups)?].to_vec(),
                &segs[ups..],
            ),
            f if Some(f) == lib => (true, vec![], &segs[1..]),
            f if mods.contains(f) => (false, module.to_vec(), segs),
            f => aliases.get(f).map(|(e, a)| (*e, a.clone(), &segs[1..]))?,
        };
        Some((external, [base.as_slice(), rest].concat()))
    }

    /// Whether the `use` at token `at` is `pub` or `pub(…)`.
    fn is_pub(toks: &Toks, at: usize) -> bool {
        let mut k = at.wrapping_sub(1);
        if tok(toks, k) == ")" {
            while !matches!(tok(toks, k), "(" | "") {
                k = k.wrapping_sub(1);
            }
            k = k.wrapping_sub(1);
        }
        tok(toks, k) == "pub"
    }

    /// Expands the `use` tree at token `i` under `prefix` into (path, name it brings in);
    /// returns the index after it.
    fn use_tree(
        toks: &Toks,
        mut i: usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, Option<String>)>,
    ) -> usize {
        let t = |k: usize| tok(toks, k);
        let mut path = prefix.to_vec();
        loop {
            match t(i) {
                "{" => {
                    i += 1;
                    while !matches!(t(i), "}" | "") {
                        i = use_tree(toks, i, &path, out).max(i + 1);
                        i += usize::from(t(i) == ",");
                    }
                    return i + 1;
                }
                "self" if !path.is_empty() => {} // `{self, …}`: the prefix itself
                s if s == "*" || s.starts_with(is_ident) => path.push(s.to_string()),
                _ => break,
            }
            i += 1;
            if t(i) != "::" {
                break;
            }
            i += 1;
        }
        let name = if t(i) == "as" {
            i += 2;
            Some(t(i - 1).to_string()).filter(|n| n != "_")
        } else {
            path.last().filter(|s| *s != "*").cloned()
        };
        if !path.is_empty() {
            out.push((path, name));
        }
        i
    }
}

/// One source file, read.
struct SourceFile {
    module: Vec<String>,
    bin: bool,
    parsed: Parsed,
}

/// All of `src/`, keyed by path from the crate root (`src/io/mod.rs`).
struct Tree {
    files: BTreeMap<String, SourceFile>,
    /// The binary's modules (declared in `main.rs`).
    bin_mods: BTreeSet<String>,
    /// Top-level modules → whether each is a folder (`lib.rs` and `main.rs` are roots).
    top: BTreeMap<String, bool>,
}

/// File → the files it depends on → the first (line, path) that says so.
type Graph = BTreeMap<String, BTreeMap<String, (usize, String)>>;

/// Module → the modules it may use → the only items it may use of each (empty: any).
type Table = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn module_of(path: &str) -> Vec<String> {
    let inner = path.trim_start_matches("src/").trim_end_matches(".rs");
    let mut segs: Vec<String> = inner.split('/').map(String::from).collect();
    if segs.last().is_some_and(|s| s == "mod") || matches!(inner, "lib" | "main") {
        segs.pop();
    }
    segs
}

impl Tree {
    fn read(root: &Path) -> Self {
        fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
            for entry in fs::read_dir(dir).expect("read a source folder") {
                let path = entry.expect("read a folder entry").path();
                if path.is_dir() {
                    collect(&path, root, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path
                        .strip_prefix(root)
                        .expect("under the root")
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.push((rel, fs::read_to_string(&path).expect("read a source file")));
                }
            }
        }
        let mut sources = Vec::new();
        collect(&root.join("src"), root, &mut sources);
        Self::new(&sources)
    }

    /// `sources`: (path from the crate root, text) of every file under `src/`.
    fn new(sources: &[(String, String)]) -> Self {
        let main = sources.iter().find(|(p, _)| p == "src/main.rs");
        let bin_mods = main
            .map(|(_, s)| parser::parse(s, &[], None).mods)
            .unwrap_or_default();
        let mut top = BTreeMap::new();
        let mut files = BTreeMap::new();
        for (path, text) in sources {
            let module = module_of(path);
            if let Some(first) = module.first() {
                top.insert(first.clone(), path.matches('/').count() > 1);
            }
            let bin = path == "src/main.rs" || module.first().is_some_and(|m| bin_mods.contains(m));
            let parsed = parser::parse(text, &module, bin.then_some(LIB));
            files.insert(
                path.clone(),
                SourceFile {
                    module,
                    bin,
                    parsed,
                },
            );
        }
        Self {
            files,
            bin_mods,
            top,
        }
    }

    /// The file of the module at `segs` in the library (or the binary), if it has one.
    fn module_file(&self, bin: bool, segs: &[String]) -> Option<String> {
        let Some(first) = segs.first() else {
            return Some(if bin { "src/main.rs" } else { "src/lib.rs" }.into());
        };
        let dir = format!("src/{}", segs.join("/"));
        let file = [format!("{dir}.rs"), format!("{dir}/mod.rs")]
            .into_iter()
            .find(|p| self.files.contains_key(p));
        file.filter(|_| self.bin_mods.contains(first) == bin)
    }

    /// Where `file`'s `pub use` lines (named or glob) say `item` comes from: (binary?, path).
    fn reexport(&self, file: &str, item: &str) -> Option<(bool, Vec<String>)> {
        let f = &self.files[file];
        let bin = |r: &Ref| f.bin && !r.external;
        let mut uses = f.parsed.refs.iter().filter(|r| r.kind == Kind::PubUse);
        if let Some(r) = uses.clone().find(|r| r.name.as_deref() == Some(item)) {
            return Some((bin(r), r.abs.clone()));
        }
        uses.find_map(|r| {
            let module = r.abs.strip_suffix(&["*".to_string()])?;
            let defines = self.files[&self.module_file(bin(r), module)?]
                .parsed
                .defs
                .contains(item);
            defines.then(|| (bin(r), [module, &[item.to_string()]].concat()))
        })
    }

    /// The file a path leads to, through re-exports, and whether the path names a module
    /// itself. In a `use` the last segment may be a module; in code it never is.
    fn resolve(
        &self,
        bin: bool,
        abs: &[String],
        is_use: bool,
        hops: usize,
    ) -> Option<(String, bool)> {
        let most = if is_use {
            abs.len()
        } else {
            abs.len().saturating_sub(1)
        };
        let (mut file, mut k) = (self.module_file(bin, &[])?, 0);
        while k < most
            && let Some(f) = self.module_file(bin, &abs[..=k])
        {
            (file, k) = (f, k + 1);
        }
        let target = match abs.get(k) {
            // `use super::dropout` also brings in a function the parent re-exports by that name
            None => abs
                .split_last()
                .and_then(|(last, up)| self.reexport(&self.module_file(bin, up)?, last)),
            Some(item) if item != "*" => self
                .reexport(&file, item)
                .map(|(b, p)| (b, [p.as_slice(), &abs[k + 1..]].concat())),
            Some(_) => None,
        };
        match target {
            Some((b, p)) if hops < 8 => self.resolve(b, &p, true, hops + 1),
            _ => Some((file, k == abs.len())),
        }
    }

    fn edges(&self) -> Graph {
        let mut graph = Graph::new();
        for (path, f) in &self.files {
            let out = graph.entry(path.clone()).or_default();
            for r in &f.parsed.refs {
                let Some((to, module)) =
                    self.resolve(f.bin && !r.external, &r.abs, r.kind != Kind::Expr, 0)
                else {
                    continue;
                };
                let facade =
                    r.kind == Kind::PubUse && self.files[&to].module.starts_with(&f.module);
                if !module && !facade && to != *path {
                    out.entry(to).or_insert_with(|| (r.line, r.text.clone()));
                }
            }
        }
        graph
    }

    /// The top-level module a library path uses: its first segment, or for an item of the
    /// crate root (`crate::Error`) the module the root re-exports it from.
    fn used_module(&self, abs: &[String], is_use: bool) -> Option<String> {
        match abs.first() {
            Some(first) if self.top.contains_key(first) => Some(first.clone()),
            _ => self.files[&self.resolve(false, abs, is_use, 0)?.0]
                .module
                .first()
                .cloned(),
        }
    }
}

/// Reads the `| module | may use |` table; `None` when there is none.
fn read_table(md: &str) -> Option<Table> {
    let cells = |l: &str| {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    };
    let ticked = |s: &str| {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut lines = md.lines().skip_while(|l| cells(l) != ["module", "may use"]);
    lines.next()?;
    let rows = lines
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('|'));
    let row = |l: &str| {
        let c = cells(l);
        let (mut allowed, mut last) = (BTreeMap::new(), None);
        // outside and inside parentheses in turn: `models` (only `ModelInput`), `error`
        for (k, part) in c.get(1)?.split(['(', ')']).enumerate() {
            if k % 2 == 0 {
                for m in ticked(part) {
                    allowed.insert(m.clone(), Vec::new());
                    last = Some(m);
                }
            } else if let (Some(m), Some(only)) = (&last, part.trim().strip_prefix("only")) {
                allowed.insert(m.clone(), ticked(only));
            }
        }
        Some((ticked(&c[0]).into_iter().next()?, allowed))
    };
    Some(rows.filter_map(row).collect())
}

/// Folder modules without a row, and modules the table names that do not exist.
fn table_problems(tree: &Tree, table: &Table) -> Vec<String> {
    let unlisted = tree
        .top
        .iter()
        .filter(|&(m, &folder)| folder && !table.contains_key(m));
    let mut out: Vec<_> = unlisted
        .map(|(m, _)| format!("src/{m}/ has no row in ARCHITECTURE.md's table"))
        .collect();
    for (row, allowed) in table {
        for m in std::iter::once(row)
            .chain(allowed.keys())
            .filter(|m| !tree.top.contains_key(*m))
        {
            out.push(format!(
                "ARCHITECTURE.md's table names `{m}` (row `{row}`), but src/ has no module `{m}`"
            ));
        }
    }
    out
}

/// Every library path its module's row does not allow, once per file and path.
fn violations(tree: &Tree, table: &Table) -> Vec<String> {
    let (none, mut seen, mut out) = (BTreeMap::new(), BTreeSet::new(), Vec::new());
    for (path, f) in tree.files.iter().filter(|(_, f)| !f.bin) {
        let Some(own) = f.module.first() else {
            continue;
        };
        let Some(rule) = table.get(own).or((!tree.top[own]).then_some(&none)) else {
            continue;
        };
        let mut may: Vec<_> = (rule.iter())
            .map(|(m, only)| {
                if only.is_empty() {
                    m.clone()
                } else {
                    format!("{m} (only {})", only.join(", "))
                }
            })
            .collect();
        if !rule.contains_key(ERROR) {
            may.push(format!("{ERROR} (always)"));
        }
        for r in &f.parsed.refs {
            let Some(used) = tree.used_module(&r.abs, r.kind != Kind::Expr) else {
                continue;
            };
            let beyond = |only: &Vec<String>| {
                r.abs[0] == used && r.abs.get(1).is_some_and(|i| !only.contains(i))
            };
            let what = match rule.get(&used) {
                _ if used == *own || used == ERROR => continue,
                None => format!("uses `{used}`"),
                Some(only) if !only.is_empty() && beyond(only) => {
                    format!("uses more of `{used}` than the row's items")
                }
                Some(_) => continue,
            };
            let full = format!("crate::{}", r.abs.join("::"));
            if seen.insert((path, full.clone())) {
                out.push(format!(
                    "{path}:{}: {what} ({full}); the table allows {own} to use: {}",
                    r.line,
                    may.join(", ")
                ));
            }
        }
    }
    out
}

/// Each set of files that reach one another: the shortest circle through its first file, its
/// members, and every edge between them with the line that makes it.
fn circles(graph: &Graph) -> Vec<String> {
    fn reach<'g>(graph: &'g Graph, from: &'g String) -> BTreeSet<&'g String> {
        let (mut seen, mut queue) = (BTreeSet::new(), VecDeque::from([from]));
        while let Some(v) = queue.pop_front() {
            queue.extend(graph[v].keys().filter(|w| seen.insert(*w)));
        }
        seen
    }
    let reaches: BTreeMap<_, _> = graph.keys().map(|v| (v, reach(graph, v))).collect();
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for (&v, from_v) in &reaches {
        let members: BTreeSet<&String> = from_v
            .iter()
            .copied()
            .filter(|w| reaches[w].contains(v))
            .collect();
        if members.len() < 2 || !done.insert(v) {
            continue;
        }
        done.extend(members.iter().copied());
        let (mut parent, mut queue, mut cycle) = (BTreeMap::new(), VecDeque::from([v]), vec![]);
        while let Some(u) = queue.pop_front().filter(|_| cycle.is_empty()) {
            for w in graph[u].keys().filter(|w| members.contains(w)) {
                if w == v {
                    cycle = vec![v, u];
                    while let Some(&p) = parent.get(cycle.last().unwrap()) {
                        cycle.push(p);
                    }
                    cycle.reverse();
                    break;
                } else if !parent.contains_key(w) {
                    parent.insert(w, u);
                    queue.push_back(w);
                }
            }
        }
        let join = |files: Vec<&String>, sep| {
            files
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(sep)
        };
        let mut text = format!(
            "circle: {}\n  files in it: {}",
            join(cycle, " -> "),
            join(members.iter().copied().collect(), ", ")
        );
        for &a in &members {
            for (b, (line, path)) in graph[a].iter().filter(|(b, _)| members.contains(b)) {
                write!(text, "\n  {a}:{line} -> {b} ({path})").expect("write to a String");
            }
        }
        out.push(text);
    }
    out
}

/// The crate root: `CARGO_MANIFEST_DIR` under cargo, else the current directory.
fn root() -> PathBuf {
    option_env!("CARGO_MANIFEST_DIR").map_or_else(
        || std::env::current_dir().expect("current directory"),
        PathBuf::from,
    )
}

#[test]
fn module_imports_follow_the_architecture_table() {
    let md = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let table = read_table(&md).expect("ARCHITECTURE.md has a `| module | may use |` table");
    let tree = Tree::read(&root());
    let problems = [table_problems(&tree, &table), violations(&tree, &table)].concat();
    assert!(
        problems.is_empty(),
        "{} problem(s) with ARCHITECTURE.md's dependency table (a module may use what its row lists, \
         and `error`); change the import, or if the architecture changed, the table with the reason:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn no_circles_between_files() {
    let found = circles(&Tree::read(&root()).edges());
    assert!(
        found.is_empty(),
        "{} circle(s) between source files; move what both sides need down into a file both may use, \
         or pass it in:\n{}",
        found.len(),
        found.join("\n")
    );
}

mod parser_tests {
    use super::parser::{Kind, parse};
    use super::*;

    fn module(path: &str) -> Vec<String> {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// The paths `src` names, from the crate root, read as the file of module `at`.
    fn paths(src: &str, at: &str) -> Vec<String> {
        parse(src, &module(at), None)
            .refs
            .iter()
            .map(|r| r.abs.join("::"))
            .collect()
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        Tree::new(
            &files
                .iter()
                .map(|&(p, s)| (p.to_string(), s.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn grouped_and_nested_uses_expand_to_every_path() {
        let src = "use crate::{adapters::{Linear, METHODS as M}, io};\nuse crate::x::*;";
        assert_eq!(
            paths(src, ""),
            ["adapters::Linear", "adapters::METHODS", "io", "x::*"]
        );
    }

    #[test]
    fn self_in_a_group_and_imported_names_start_paths() {
        let src = "use crate::io::{self, Folder};\nfn f() { io::read_json(); Folder::new(); }";
        assert_eq!(
            paths(src, "train"),
            ["io", "io::Folder", "io::read_json", "io::Folder::new"]
        );
    }

    #[test]
    fn comments_strings_and_char_literals_are_not_read() {
        let src = r##"
            // crate::a::x
            /// crate::b::x
            /* crate::c::x /* nested */ crate::d::x */
            const S: &str = "crate::e::x \" crate::f::x";
            const R: &str = r#"crate::g::x " still raw "#;
            const B: &[u8] = br"crate::h::x";
            fn f<'a>(s: &'a str) -> char { let q = '"'; let e = '\''; crate::i::x(s); q }
            macro_rules! m { () => { $crate::j::x() } }
        "##;
        let refs = parse(src, &[], None).refs;
        assert_eq!(
            refs.iter()
                .map(|r| (r.abs.join("::"), r.line))
                .collect::<Vec<_>>(),
            [("i::x".to_string(), 8)]
        );
    }

    #[test]
    fn super_self_and_child_paths_are_made_absolute() {
        let src = "mod child;\nuse super::adapter_folder::X;\nfn f() { super::super::tt::g(); self::h::i(); child::j(); }\n\
                   mod tests { use super::*; fn t() { super::super::k(); } }";
        let want = [
            "io::adapter_folder::X",
            "io::peft_lora::*",
            "tt::g",
            "io::peft_lora::h::i",
        ];
        assert_eq!(
            paths(src, "io::peft_lora"),
            [&want[..], &["io::peft_lora::child::j", "io::k"]].concat()
        );
    }

    #[test]
    fn the_binary_reaches_the_library_by_name() {
        let src = "use ttlora::data::{self, C};\nfn f() { data::read(); crate::cli::g(); }";
        let refs = parse(src, &module("cli::train"), Some("ttlora")).refs;
        let got: Vec<_> = refs
            .iter()
            .map(|r| (r.abs.join("::"), r.external))
            .collect();
        let want = [
            ("data", true),
            ("data::C", true),
            ("data::read", true),
            ("cli::g", false),
        ];
        assert_eq!(got, want.map(|(p, e)| (p.to_string(), e)));
    }

    #[test]
    fn pub_use_is_told_from_use() {
        let refs = parse(
            "mod a; pub(crate) use a::X; pub use a::Y; #[cfg(test)] use a::Z;",
            &[],
            None,
        )
        .refs;
        assert_eq!(
            refs.iter().map(|r| r.kind).collect::<Vec<_>>(),
            [Kind::PubUse, Kind::PubUse, Kind::Use]
        );
    }

    #[test]
    fn re_exports_lead_to_the_defining_file_and_facades_are_not_edges() {
        let t = tree(&[
            (
                "src/lib.rs",
                "pub mod ops; pub mod models; mod error; pub use error::Error;",
            ),
            ("src/error.rs", "pub enum Error { X }"),
            (
                "src/ops/mod.rs",
                "mod dropout; mod residual; pub use dropout::{dropout, Mask}; pub use residual::*;",
            ),
            ("src/ops/dropout.rs", "pub fn dropout() {} pub struct Mask;"),
            ("src/ops/residual.rs", "pub fn add() {}"),
            (
                "src/ops/attention.rs",
                "use super::dropout; fn f() { dropout(); }",
            ),
            (
                "src/models/mod.rs",
                "use crate::ops::{self, Mask};\nfn f() { ops::dropout(); crate::ops::add(); crate::Error::X; }",
            ),
        ]);
        let g = t.edges();
        let to = |f: &str| g[f].keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            to("src/models/mod.rs"),
            ["src/error.rs", "src/ops/dropout.rs", "src/ops/residual.rs"]
        );
        assert_eq!(to("src/ops/attention.rs"), ["src/ops/dropout.rs"]);
        assert!(
            to("src/ops/mod.rs").is_empty()
                && to("src/lib.rs").is_empty()
                && circles(&g).is_empty()
        );
        assert_eq!(
            t.used_module(&module("Error::X"), false).as_deref(),
            Some("error")
        );
    }

    #[test]
    fn circles_are_found_and_shown() {
        let t = tree(&[
            ("src/lib.rs", "mod io;"),
            ("src/io/mod.rs", "mod a; mod b; mod c;"),
            ("src/io/a.rs", "fn f() { super::b::g(); }"),
            ("src/io/b.rs", "use super::c::h;"),
            ("src/io/c.rs", "use crate::io::a::f;"),
        ]);
        let found = circles(&t.edges());
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .starts_with("circle: src/io/a.rs -> src/io/b.rs -> src/io/c.rs -> src/io/a.rs\n"),
            "{}",
            found[0]
        );
        assert!(
            found[0].contains("\n  src/io/a.rs:1 -> src/io/b.rs (super::b::g)"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn the_rules_name_missing_rows_unknown_modules_and_each_forbidden_path() {
        let t = tree(&[
            (
                "src/lib.rs",
                "mod data; mod models; mod io; mod error; mod device;\n\
                 pub use device::parse_device; pub use error::Error;",
            ),
            (
                "src/data/mod.rs",
                "use crate::models::{ModelInput, Bert};\nfn f() { crate::Error::X; }",
            ),
            ("src/models/mod.rs", "fn f() { crate::parse_device(); }"),
            ("src/io/mod.rs", ""),
            ("src/device.rs", "use crate::io::X;"),
            ("src/error.rs", ""),
        ]);
        let md = "| module | may use |\n|---|---|\n| `data` | `models` (only `ModelInput`) |\n| `models` | `tt` |\n";
        let table = read_table(md).unwrap();
        let problems = [table_problems(&t, &table), violations(&t, &table)].concat();
        let want = [
            "src/io/ has no row in ARCHITECTURE.md's table",
            "ARCHITECTURE.md's table names `tt` (row `models`), but src/ has no module `tt`",
            "src/data/mod.rs:1: uses more of `models` than the row's items (crate::models::Bert); \
             the table allows data to use: models (only ModelInput), error (always)",
            "src/device.rs:1: uses `io` (crate::io::X); the table allows device to use: error (always)",
            "src/models/mod.rs:1: uses `device` (crate::parse_device); \
             the table allows models to use: tt, error (always)",
        ];
        assert_eq!(problems, want);
    }

    #[test]
    fn the_table_is_read_with_its_notes() {
        let md = "x\n| module | may use |\n|---|---|\n| `tt` | candle — nothing of ours but `error` |\n\
                  | `data` | `models` (only `ModelInput`), `error` |\n| `train` | `tt` (parameter counts) |\n\
                  | `cli` (binary) | the library's public API only |\n\nafter";
        let rows: Vec<_> = read_table(md)
            .unwrap()
            .iter()
            .map(|(m, a)| format!("{m}: {a:?}"))
            .collect();
        let want = [
            "cli: {}",
            r#"data: {"error": [], "models": ["ModelInput"]}"#,
            r#"train: {"tt": []}"#,
            r#"tt: {"error": []}"#,
        ];
        assert_eq!(rows, want);
    }
}
