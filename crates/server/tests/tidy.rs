//! Tidy tests: the architecture's invariants (ARCHITECTURE.md), checked
//! over the source tree the way rust-analyzer's `tidy` does. Each fails
//! naming the file and line that breaks its rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !matches!(p.file_name().and_then(|n| n.to_str()), Some("target" | "fuzz" | "node_modules")) {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The text without comments and without `#[cfg(test)]` modules (tests may
/// spell anything).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Production sources of the workspace: `crates/*/src` and `benches/src`.
fn production() -> Vec<(PathBuf, String)> {
    let mut out = sources(&root().join("crates"));
    out.retain(|(p, _)| p.components().any(|c| c.as_os_str() == "src") && !rel(p).contains("/tests/"));
    out
}

/// String literals of a line (simple: no escapes inside the names we look for).
fn literals(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        // Raw strings and byte strings are treated alike.
        out.push(&after[..j]);
        rest = &after[j + 1..];
    }
    out
}

/// 1. A gRPC handler converts the request, makes one call into `app`,
///    converts the answer: it never names the registry, the key ring or
///    the log.
#[test]
fn grpc_handlers_make_one_call_into_app() {
    let dir = root().join("crates/server/src/grpc");
    let mut failures = Vec::new();
    let mut handlers = 0;
    for (path, text) in sources(&dir) {
        let code = code_of(&text);
        for (n, line) in code.lines().enumerate() {
            for word in ["registry", "keyring", "Registry", "Keyring", "EventLog", ".log."] {
                if line.contains(word) {
                    failures.push(format!("{}:{}: names {word:?}: {}", rel(&path), n + 1, line.trim()));
                }
            }
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        if name == "mod.rs" || name == "convert.rs" {
            continue;
        }
        // Each handler: from `async fn` to the next `async fn` or the end
        // of the impl.
        let mut bodies: Vec<(String, String)> = Vec::new();
        for line in code.lines() {
            let t = line.trim_start();
            if t.starts_with("async fn ") {
                bodies.push((t.to_string(), String::new()));
            } else if let Some((_, body)) = bodies.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        for (head, body) in &bodies {
            handlers += 1;
            let calls = body.matches("self.app.").count();
            let into_app = body.matches("self.app.").filter(|_| true).count()
                - body.matches("self.app.auth_config()").count()
                - body.matches("self.app.erasure_public_key()").count();
            if into_app != 1 {
                failures.push(format!(
                    "{}: `{}` makes {into_app} calls into app ({calls} with accessors); a handler makes one",
                    rel(&path),
                    head.trim_end_matches('{').trim()
                ));
            }
        }
    }
    assert!(handlers >= 40, "found only {handlers} handlers: has the layout changed?");
    assert!(failures.is_empty(), "gRPC handlers break the rule:\n{}", failures.join("\n"));
}

/// 2. `app` depends on neither tonic nor actix-web nor the API's protobuf
///    types; one code table serves gRPC and HTTP.
#[test]
fn app_knows_no_wire() {
    let manifest = std::fs::read_to_string(root().join("crates/app/Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for banned in ["tonic", "actix-web", "actix_web", "prost", "http ="] {
        assert!(!deps.contains(banned), "crates/app depends on {banned}");
    }
    let mut failures = Vec::new();
    for (path, text) in sources(&root().join("crates/app/src")) {
        for (n, line) in code_of(&text).lines().enumerate() {
            for banned in ["tonic", "actix_web", "proto::api", "proto::pypes::api"] {
                if line.contains(banned) {
                    failures.push(format!("{}:{}: {}", rel(&path), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "app reaches the wire:\n{}", failures.join("\n"));
    // The edges map codes through the table, not on their own.
    let mut own = Vec::new();
    for (path, text) in sources(&root().join("crates/server/src")) {
        for (n, line) in code_of(&text).lines().enumerate() {
            let builds_status =
                ["Status::invalid_argument", "Status::not_found", "Status::internal", "Status::permission_denied"]
                    .iter()
                    .any(|s| line.contains(s));
            let http_errors = [
                "HttpResponse::NotFound",
                "HttpResponse::Conflict",
                "HttpResponse::BadRequest",
                "HttpResponse::Forbidden",
                "HttpResponse::Unauthorized",
            ]
            .iter()
            .any(|s| line.contains(s));
            if builds_status || http_errors {
                own.push(format!("{}:{}: {}", rel(&path), n + 1, line.trim()));
            }
        }
    }
    assert!(own.is_empty(), "an edge maps errors on its own (use AppError::answer):\n{}", own.join("\n"));
}

/// 3. The privacy processes never sleep to let a race pass: a wait is a
///    retry's backoff or a period, never a fixed pause.
#[test]
fn processes_do_not_sleep_through_races() {
    let mut failures = Vec::new();
    for (path, text) in sources(&root().join("crates/app/src")) {
        for (n, line) in code_of(&text).lines().enumerate() {
            if line.contains("sleep(Duration::from") || line.contains("sleep(std::time::Duration::from") {
                failures.push(format!("{}:{}: {}", rel(&path), n + 1, line.trim()));
            }
        }
    }
    assert!(failures.is_empty(), "fixed sleeps in the application layer:\n{}", failures.join("\n"));
    for process in ["erasure", "retention", "restriction", "consent"] {
        let text = std::fs::read_to_string(root().join(format!("crates/app/src/{process}.rs"))).unwrap();
        assert!(
            text.contains("pub async fn recover") || text.contains("pub async fn run"),
            "the {process} process has no entry that resumes it after a restart"
        );
    }
}

/// 4. Every append to the event log goes through the actors (entities
///    through their actor, other streams through `actors::write`), and
///    every stored event is made by the codec in `events`.
#[test]
fn every_append_goes_through_the_actors_and_the_codec() {
    let mut failures = Vec::new();
    for (path, text) in production() {
        let r = rel(&path);
        let log_crate = r.starts_with("crates/eventlog");
        for (n, line) in code_of(&text).lines().enumerate() {
            let appends = ["log.append(", "log.append_multi(", "log().append(", "log().append_multi("]
                .iter()
                .any(|p| line.contains(p));
            if appends && !r.starts_with("crates/actors/src") && !log_crate {
                failures.push(format!("{r}:{}: appends to the log itself: {}", n + 1, line.trim()));
            }
            if line.contains("NewEvent::new(") && !r.starts_with("crates/events/src") && !log_crate {
                failures.push(format!("{r}:{}: makes a stored event outside the codec: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(failures.is_empty(), "writes that bypass the actors or the codec:\n{}", failures.join("\n"));
}

/// 5. Only `events` spells stream names and event types.
#[test]
fn only_events_spells_stream_names_and_event_types() {
    let types_rs = std::fs::read_to_string(root().join("crates/events/src/types.rs")).unwrap();
    let types: BTreeSet<String> = types_rs
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| literals(l).first().map(|s| s.to_string()))
        .collect();
    assert!(types.len() > 50, "read {} event types from events/src/types.rs", types.len());
    let prefixes = [
        "session-",
        "subject-",
        "tenant-",
        "pype-",
        "username-",
        "loginfail-",
        "authsession-",
        "staff-directory",
        "audit-",
        "process-",
    ];
    // A stream name: a prefix, then an id, a placeholder or nothing.
    let names_a_stream = |lit: &str| {
        prefixes.iter().any(|p| {
            lit.strip_prefix(p).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('{') || rest.starts_with(|c: char| c.is_ascii_hexdigit())
            })
        })
    };
    let mut failures = Vec::new();
    for (path, text) in production() {
        let r = rel(&path);
        // The log's own crates are generic; a shipped conformance suite
        // names made-up streams.
        if r.starts_with("crates/events/src") || r.starts_with("crates/eventlog") || r.ends_with("conformance.rs") {
            continue;
        }
        // The domain names its events' variants (the FIELDS tables), some
        // of which read like stored types; it never names a stored type.
        let domain = r.starts_with("crates/domain/src");
        for (n, line) in code_of(&text).lines().enumerate() {
            for lit in literals(line) {
                if types.contains(lit) && !domain {
                    failures.push(format!("{r}:{}: event type {lit:?} spelled outside events", n + 1));
                }
                if names_a_stream(lit) {
                    failures.push(format!("{r}:{}: stream name {lit:?} spelled outside events", n + 1));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The module a file is: `src/a.rs` and `src/a/mod.rs` are `a`,
/// `src/a/b.rs` is `a::b`, `src/lib.rs` and `src/main.rs` the root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts.join("::")
}

/// The import cycles between the files of the crate whose sources are `src`.
fn cycles_in(src: &Path) -> Vec<String> {
    let mut files = sources(src);
    // A binary beside a library is a crate of its own (it reaches the
    // library by name, not through `crate::`).
    if src.join("lib.rs").exists() {
        files.retain(|(p, _)| p != &src.join("main.rs") && !p.starts_with(src.join("bin")));
    }
    let modules: BTreeMap<String, String> = files.iter().map(|(p, t)| (module_of(src, p), code_of(t))).collect();
    // What the root re-exports: `pub use a::{X, Y}` / `pub use a::X`
    // (also over several lines).
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    if let Some(root_code) = modules.get("") {
        for stmt in root_code.split(';') {
            let stmt = stmt.trim();
            let Some(rest) = stmt.strip_prefix("pub use ") else { continue };
            let Some((module, names)) = rest.split_once("::") else { continue };
            let names = names.trim().trim_start_matches('{').trim_end_matches('}');
            for name in names.split(',') {
                let name = name.trim().rsplit(" as ").next().unwrap_or("").trim();
                let name = name.rsplit("::").next().unwrap_or("");
                if !name.is_empty() {
                    reexports.insert(name.to_string(), module.trim().to_string());
                }
            }
        }
    }
    let resolve = |from: &str, path: &str| -> Option<String> {
        // Longest known module that prefixes the path.
        let parts: Vec<&str> = path.split("::").collect();
        let base: Vec<&str> = if from.is_empty() { vec![] } else { from.split("::").collect() };
        let (mut segs, rest): (Vec<&str>, &[&str]) = match parts.first() {
            Some(&"crate") => (vec![], &parts[1..]),
            Some(&"super") => {
                let mut b = base.clone();
                b.pop();
                (b, &parts[1..])
            }
            Some(&"self") => (base.clone(), &parts[1..]),
            _ => return None,
        };
        if segs.is_empty()
            && rest.len() == 1
            && let Some(m) = reexports.get(rest[0].trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
        {
            return Some(m.clone());
        }
        let mut best = segs.join("::");
        for seg in rest {
            let seg = seg.trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
            segs.push(seg);
            let candidate = segs.join("::");
            if modules.contains_key(&candidate) {
                best = candidate;
            } else {
                if best.is_empty()
                    && let Some(m) = reexports.get(seg)
                {
                    best = m.clone();
                }
                break;
            }
        }
        Some(best)
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &modules {
        // A crate root's module declarations and re-exports are its table
        // of contents, not imports of its own.
        let stripped: String;
        let code = if module.is_empty() {
            stripped = code
                .split_inclusive(';')
                .filter(|stmt| {
                    let t = stmt.trim_start();
                    !(t.starts_with("pub use ")
                        || t.starts_with("pub mod ")
                        || t.starts_with("mod ")
                        || t.starts_with("pub(crate) mod "))
                })
                .collect();
            &stripped
        } else {
            code
        };
        let mut targets = BTreeSet::new();
        for token in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            if token.ends_with("::") {
                // `crate::{…}`: the names in the braces are read below.
            } else if token.starts_with("crate::") || token.starts_with("super::") || token.starts_with("self::") {
                if let Some(t) = resolve(module, token)
                    && &t != module
                    && modules.contains_key(&t)
                {
                    targets.insert(t);
                }
            } else if let Some((first, _)) = token.split_once("::")
                && !first.is_empty()
            {
                // A path through a child module: `child::Item`.
                let child = if module.is_empty() { first.to_string() } else { format!("{module}::{first}") };
                if &child != module && modules.contains_key(&child) {
                    targets.insert(child);
                }
            }
        }
        // `use crate::{a, b::C}`: the names inside braces.
        for line in code.lines() {
            let t = line.trim();
            for prefix in ["use crate::{", "use super::{", "pub use crate::{"] {
                if let Some(list) = t.strip_prefix(prefix) {
                    let head = if prefix.contains("super") { "super" } else { "crate" };
                    for item in list.trim_end_matches("};").split(',') {
                        let item = item.trim().split(" as ").next().unwrap_or("").trim();
                        if item.is_empty() {
                            continue;
                        }
                        if let Some(t) = resolve(module, &format!("{head}::{item}"))
                            && &t != module
                            && modules.contains_key(&t)
                        {
                            targets.insert(t);
                        }
                    }
                }
            }
        }
        edges.insert(module.clone(), targets);
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for t in edges.get(m).into_iter().flatten() {
            match state.get(t.as_str()).copied().unwrap_or(0) {
                0 => visit(t, edges, state, stack, found),
                1 => {
                    let at = stack.iter().position(|s| s == t).unwrap_or(0);
                    let name = |s: &String| if s.is_empty() { "<root>".to_string() } else { s.clone() };
                    let mut cycle: Vec<String> = stack[at..].iter().map(name).collect();
                    cycle.push(name(t));
                    found.push(cycle.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut found = Vec::new();
    for m in edges.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            visit(m, &edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// 6. No import cycle between the files of any crate. An edge is a path
///    through `crate::`, `super::` or `self::` to another file's module;
///    a name the crate root re-exports counts as the module it comes from.
#[test]
fn no_import_cycles_between_files() {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.push(root().join("benches/src"));
    let mut cycles = Vec::new();
    for src in crates {
        for c in cycles_in(&src) {
            cycles.push(format!("{}: {c}", rel(&src)));
        }
    }
    assert!(cycles.is_empty(), "import cycles between files:\n{}", cycles.join("\n"));
}

/// The cycle finder finds a cycle (so the test above can fail).
#[test]
fn the_cycle_finder_sees_a_planted_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B(crate::a::A);\n").unwrap();
    let found = cycles_in(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("a -> b -> a") || found[0].contains("b -> a -> b"), "{found:?}");
    // Through a name the root re-exports, and through `super::`.
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use b::B;\n").unwrap();
    std::fs::write(src.join("a.rs"), "pub struct A(crate::B);\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{a::A};\npub struct B;\nfn f(_: A) {}\n").unwrap();
    assert_eq!(cycles_in(&src).len(), 1, "{:?}", cycles_in(&src));
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    assert!(cycles_in(&src).is_empty(), "{:?}", cycles_in(&src));
}

/// Every RPC an adapter names is in the metrics' table (else it would be
/// counted as `other`).
#[test]
fn every_rpc_has_its_metrics_slot() {
    let metrics = std::fs::read_to_string(root().join("crates/server/src/metrics.rs")).unwrap();
    let table = metrics.split("pub const METHODS").nth(1).unwrap().split("];").next().unwrap();
    let known: BTreeSet<&str> = literals(table).into_iter().collect();
    let mut missing = Vec::new();
    let mut seen = 0;
    for (path, text) in sources(&root().join("crates/server/src/grpc")) {
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for call in ["self.unary(", "self.streaming("] {
            for rest in flat.split(call).skip(1) {
                let Some(name) = literals(rest).into_iter().next() else { continue };
                seen += 1;
                if !known.contains(name) {
                    missing.push(format!("{}: {name}", rel(&path)));
                }
            }
        }
    }
    assert!(seen >= 50, "found only {seen} RPC names");
    assert!(missing.is_empty(), "RPCs without a metrics slot:\n{}", missing.join("\n"));
}
