//! The API reference, `docs/api.md`, is generated from the comments in
//! `proto/pypes/api/v1`: this test fails when a service, RPC, message,
//! field or enum there has no comment, or when `docs/api.md` is not what
//! the comments give. Regenerate it with
//! `UPDATE_API_DOCS=1 cargo nextest run -p proto --test api_reference`
//! (`just api-docs`).

use std::fmt::Write as _;
use std::path::PathBuf;

use prost_types::source_code_info::Location;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, field_descriptor_proto};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The comment of the element at `path`, joined into one paragraph per
/// blank-line-separated block (leading, else trailing).
fn comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let info = file.source_code_info.as_ref()?;
    let loc: &Location = info.location.iter().find(|l| l.path == path)?;
    let text = loc.leading_comments.as_deref().or(loc.trailing_comments.as_deref())?.trim();
    if text.is_empty() {
        return None;
    }
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    Some(paragraphs.join("\n\n"))
}

fn type_name(f: &prost_types::FieldDescriptorProto) -> String {
    use field_descriptor_proto::{Label, Type};
    let base = match f.r#type() {
        Type::Message | Type::Enum => {
            f.type_name().trim_start_matches(".pypes.api.v1.").trim_start_matches('.').to_string()
        }
        Type::Double => "double".into(),
        Type::Float => "float".into(),
        Type::Int64 => "int64".into(),
        Type::Uint64 => "uint64".into(),
        Type::Int32 => "int32".into(),
        Type::Fixed64 => "fixed64".into(),
        Type::Fixed32 => "fixed32".into(),
        Type::Bool => "bool".into(),
        Type::String => "string".into(),
        Type::Group => "group".into(),
        Type::Bytes => "bytes".into(),
        Type::Uint32 => "uint32".into(),
        Type::Sfixed32 => "sfixed32".into(),
        Type::Sfixed64 => "sfixed64".into(),
        Type::Sint32 => "sint32".into(),
        Type::Sint64 => "sint64".into(),
    };
    if f.label() == Label::Repeated { format!("repeated {base}") } else { base }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

struct Doc {
    out: String,
    missing: Vec<String>,
}

impl Doc {
    fn need(&mut self, file: &FileDescriptorProto, path: &[i32], what: String) -> String {
        match comment(file, path) {
            Some(c) => c,
            None => {
                self.missing.push(format!("{}: {what}", file.name()));
                String::new()
            }
        }
    }

    fn message(&mut self, file: &FileDescriptorProto, m: &DescriptorProto, path: Vec<i32>, prefix: &str) {
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            return;
        }
        let name = format!("{prefix}{}", m.name());
        let about = self.need(file, &path, format!("message {name}"));
        let _ = writeln!(self.out, "### {name}\n\n{about}\n");
        if !m.field.is_empty() {
            let _ = writeln!(self.out, "| field | type | # | meaning |\n|---|---|---|---|");
            for (j, f) in m.field.iter().enumerate() {
                let mut p = path.clone();
                p.extend([2, j as i32]);
                let meaning = self.need(file, &p, format!("field {name}.{}", f.name()));
                let oneof = f
                    .oneof_index
                    .filter(|_| !f.proto3_optional())
                    .and_then(|i| m.oneof_decl.get(i as usize))
                    .map(|o| format!(" (one of `{}`)", o.name()))
                    .unwrap_or_default();
                let optional = if f.proto3_optional() { "optional " } else { "" };
                let _ = writeln!(
                    self.out,
                    "| `{}` | `{optional}{}` | {} | {}{} |",
                    f.name(),
                    type_name(f),
                    f.number(),
                    cell(&meaning),
                    oneof
                );
            }
            self.out.push('\n');
        }
        for (k, e) in m.enum_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([4, k as i32]);
            self.enumeration(file, e, p, &format!("{name}."));
        }
        for (k, n) in m.nested_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([3, k as i32]);
            self.message(file, n, p, &format!("{name}."));
        }
    }

    fn enumeration(&mut self, file: &FileDescriptorProto, e: &EnumDescriptorProto, path: Vec<i32>, prefix: &str) {
        let name = format!("{prefix}{}", e.name());
        let about = self.need(file, &path, format!("enum {name}"));
        let _ = writeln!(self.out, "### {name} (enum)\n\n{about}\n\n| value | # | meaning |\n|---|---|---|");
        for (j, v) in e.value.iter().enumerate() {
            let mut p = path.clone();
            p.extend([2, j as i32]);
            let meaning = comment(file, &p).unwrap_or_default();
            let _ = writeln!(self.out, "| `{}` | {} | {} |", v.name(), v.number(), cell(&meaning));
        }
        self.out.push('\n');
    }
}

fn generate() -> (String, Vec<String>) {
    let proto = root().join("proto");
    let files = ["pypes/api/v1/api.proto", "pypes/api/v1/integration.proto", "pypes/api/v1/region.proto"];
    let fds = protox::compile(files.iter().map(|f| proto.join(f)), [&proto]).expect("the API compiles");
    let mut doc = Doc {
        out: String::from(
            "# API reference: `pypes.api.v1`\n\n\
             Generated from the comments in `proto/pypes/api/v1` by `crates/proto/tests/api_reference.rs`;\n\
             do not edit by hand (`just api-docs` regenerates it, and the test fails when it is stale or\n\
             when a service, RPC, message, field or enum has no comment).\n\n\
             Every call carries `authorization: Bearer <key>`. Errors are gRPC status codes with a message\n\
             that names what was wrong; the table of codes is in docs/security.md and each RPC below names\n\
             its own. Ids are UUIDs in their text form; times are microseconds since the Unix epoch, UTC.\n\n",
        ),
        missing: Vec::new(),
    };
    let ours: Vec<&FileDescriptorProto> = fds.file.iter().filter(|f| f.name().starts_with("pypes/api/v1/")).collect();
    doc.out.push_str("## Services\n\n");
    for file in &ours {
        for (i, s) in file.service.iter().enumerate() {
            let about = doc.need(file, &[6, i as i32], format!("service {}", s.name()));
            let _ = writeln!(doc.out, "### {}\n\n{about}\n", s.name());
            for (j, m) in s.method.iter().enumerate() {
                let about = doc.need(file, &[6, i as i32, 2, j as i32], format!("rpc {}.{}", s.name(), m.name()));
                let stream = |yes: bool| if yes { "stream " } else { "" };
                let short = |t: &str| t.trim_start_matches(".pypes.api.v1.").to_string();
                let _ = writeln!(
                    doc.out,
                    "#### `{}({}{}) → {}{}`\n\n{about}\n",
                    m.name(),
                    stream(m.client_streaming()),
                    short(m.input_type()),
                    stream(m.server_streaming()),
                    short(m.output_type())
                );
            }
        }
    }
    doc.out.push_str("## Messages\n\n");
    for file in &ours {
        for (i, m) in file.message_type.iter().enumerate() {
            doc.message(file, m, vec![4, i as i32], "");
        }
    }
    doc.out.push_str("## Enums\n\n");
    for file in &ours {
        for (i, e) in file.enum_type.iter().enumerate() {
            doc.enumeration(file, e, vec![5, i as i32], "");
        }
    }
    (doc.out.trim_end().to_string() + "\n", doc.missing)
}

#[test]
fn every_element_of_the_api_has_a_comment_and_docs_api_md_is_current() {
    let (text, missing) = generate();
    assert!(missing.is_empty(), "{} elements of the API have no comment:\n{}", missing.len(), missing.join("\n"));
    let path = root().join("docs/api.md");
    if std::env::var_os("UPDATE_API_DOCS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "docs/api.md is not what the comments in proto/pypes/api/v1 give: run `just api-docs` \
         (UPDATE_API_DOCS=1 cargo nextest run -p proto --test api_reference) and commit it"
    );
}

#[test]
fn a_missing_comment_is_found() {
    // The checker itself: a file with an uncommented field is reported.
    let dir = std::env::temp_dir().join(format!("pypes-apidoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("t.proto"),
        "syntax = \"proto3\";\npackage t;\n// A thing.\nmessage Thing {\n  // Its name.\n  string name = 1;\n  uint32 size = 2;\n}\n",
    )
    .unwrap();
    let fds = protox::compile([dir.join("t.proto")], [&dir]).unwrap();
    let file = &fds.file[0];
    assert_eq!(comment(file, &[4, 0]).as_deref(), Some("A thing."));
    assert_eq!(comment(file, &[4, 0, 2, 0]).as_deref(), Some("Its name."));
    assert_eq!(comment(file, &[4, 0, 2, 1]), None);
    let _ = std::fs::remove_dir_all(dir);
}
