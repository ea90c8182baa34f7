//! Generates the AMQP 0-9-1 method structs, the `Method` enum, their encode/decode functions and
//! the protocol constants from `spec/amqp-rabbitmq-0.9.1.json` (RabbitMQ's machine-readable spec,
//! copied into this crate so the build never reads outside it).
//!
//! Output: `$OUT_DIR/methods.rs` (included by `src/methods.rs`), `$OUT_DIR/constants.rs`
//! (included by `src/constants.rs`) and `$OUT_DIR/arbitrary.rs` (proptest strategies, included by
//! `tests/roundtrip.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const SPEC: &str = "spec/amqp-rabbitmq-0.9.1.json";

/// The wire types of method arguments, after domains are resolved.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Octet,
    Short,
    Long,
    LongLong,
    Bit,
    ShortStr,
    LongStr,
    Table,
    Timestamp,
}

impl Ty {
    fn parse(s: &str) -> Ty {
        match s {
            "octet" => Ty::Octet,
            "short" => Ty::Short,
            "long" => Ty::Long,
            "longlong" => Ty::LongLong,
            "bit" => Ty::Bit,
            "shortstr" => Ty::ShortStr,
            "longstr" => Ty::LongStr,
            "table" => Ty::Table,
            "timestamp" => Ty::Timestamp,
            other => panic!("unknown AMQP type {other} in {SPEC}"),
        }
    }

    fn rust(self) -> &'static str {
        match self {
            Ty::Octet => "u8",
            Ty::Short => "u16",
            Ty::Long => "u32",
            Ty::LongLong | Ty::Timestamp => "u64",
            Ty::Bit => "bool",
            Ty::ShortStr => "String",
            Ty::LongStr => "Bytes",
            Ty::Table => "FieldTable",
        }
    }

    fn spec_name(self) -> &'static str {
        match self {
            Ty::Octet => "octet",
            Ty::Short => "short",
            Ty::Long => "long",
            Ty::LongLong => "longlong",
            Ty::Bit => "bit",
            Ty::ShortStr => "shortstr",
            Ty::LongStr => "longstr",
            Ty::Table => "table",
            Ty::Timestamp => "timestamp",
        }
    }
}

struct Arg {
    spec_name: String,
    field: String,
    ty: Ty,
    /// The deprecated `ticket` argument: not a struct field, written as the spec default.
    ticket_default: Option<u16>,
}

struct MethodSpec {
    name: String,
    id: u16,
    rust: String,
    synchronous: bool,
    content: bool,
    args: Vec<Arg>,
}

struct ClassSpec {
    name: String,
    id: u16,
    methods: Vec<MethodSpec>,
}

fn pascal(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn field_name(s: &str) -> String {
    if s == "type" {
        "kind".to_string()
    } else {
        s.replace('-', "_")
    }
}

fn upper(s: &str) -> String {
    s.replace('-', "_").to_ascii_uppercase()
}

fn as_u16(v: &Value, what: &str) -> u16 {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("{what} is not a u16 in {SPEC}"))
}

fn load(spec: &Value) -> Vec<ClassSpec> {
    let mut domains: HashMap<String, String> = HashMap::new();
    for d in spec["domains"].as_array().expect("domains array") {
        let pair = d.as_array().expect("domain pair");
        domains.insert(
            pair[0].as_str().expect("domain name").to_string(),
            pair[1].as_str().expect("domain type").to_string(),
        );
    }
    let resolve = |a: &Value| -> Ty {
        let raw = a["type"]
            .as_str()
            .or_else(|| a["domain"].as_str())
            .expect("argument type or domain");
        let base = domains.get(raw).map(String::as_str).unwrap_or(raw);
        Ty::parse(base)
    };
    let mut classes = Vec::new();
    for c in spec["classes"].as_array().expect("classes array") {
        let cname = c["name"].as_str().expect("class name").to_string();
        let mut methods = Vec::new();
        for m in c["methods"].as_array().expect("methods array") {
            let mname = m["name"].as_str().expect("method name").to_string();
            let args = m["arguments"]
                .as_array()
                .expect("arguments array")
                .iter()
                .map(|a| {
                    let spec_name = a["name"].as_str().expect("argument name").to_string();
                    let ty = resolve(a);
                    let ticket_default = (spec_name == "ticket").then(|| {
                        assert!(ty == Ty::Short, "ticket must be a short");
                        a.get("default-value")
                            .map(|v| as_u16(v, "ticket default"))
                            .unwrap_or(0)
                    });
                    Arg {
                        field: field_name(&spec_name),
                        spec_name,
                        ty,
                        ticket_default,
                    }
                })
                .collect();
            methods.push(MethodSpec {
                rust: pascal(&mname),
                id: as_u16(&m["id"], "method id"),
                synchronous: m["synchronous"].as_bool().unwrap_or(false),
                content: m["content"].as_bool().unwrap_or(false),
                name: mname,
                args,
            });
        }
        classes.push(ClassSpec {
            id: as_u16(&c["id"], "class id"),
            name: cname,
            methods,
        });
    }
    classes
}

/// Splits a method's arguments into runs: consecutive bits share octets (at most 8 per octet).
enum Chunk<'a> {
    Single(&'a Arg),
    Bits(Vec<&'a Arg>),
}

fn chunks(args: &[Arg]) -> Vec<Chunk<'_>> {
    let mut out: Vec<Chunk<'_>> = Vec::new();
    for a in args {
        if a.ty == Ty::Bit {
            if let Some(Chunk::Bits(bits)) = out.last_mut() {
                if bits.len() < 8 {
                    bits.push(a);
                    continue;
                }
            }
            out.push(Chunk::Bits(vec![a]));
        } else {
            out.push(Chunk::Single(a));
        }
    }
    out
}

fn gen_method(out: &mut String, class: &ClassSpec, m: &MethodSpec) {
    let full = format!("{}.{}", class.name, m.name);
    let fields: Vec<&Arg> = m
        .args
        .iter()
        .filter(|a| a.ticket_default.is_none())
        .collect();
    let _ = writeln!(
        out,
        "    /// `{full}` (class {}, method {}){}{}.",
        class.id,
        m.id,
        if m.synchronous { ", synchronous" } else { "" },
        if m.content { ", carries content" } else { "" },
    );
    if m.args.iter().any(|a| a.ticket_default.is_some()) {
        let _ = writeln!(
            out,
            "    ///\n    /// The deprecated `ticket` argument is not a field: it is written as the spec default and ignored on read."
        );
    }
    let _ = writeln!(out, "    #[derive(Clone, Debug, Default, PartialEq)]");
    if fields.is_empty() {
        let _ = writeln!(out, "    pub struct {};", m.rust);
    } else {
        let _ = writeln!(out, "    pub struct {} {{", m.rust);
        for a in &fields {
            let _ = writeln!(out, "        /// `{}` ({}).", a.spec_name, a.ty.spec_name());
            let _ = writeln!(out, "        pub {}: {},", a.field, a.ty.rust());
        }
        let _ = writeln!(out, "    }}");
    }
    let _ = writeln!(out, "\n    impl {} {{", m.rust);
    let _ = writeln!(out, "        /// The class id, {}.", class.id);
    let _ = writeln!(out, "        pub const CLASS_ID: u16 = {};", class.id);
    let _ = writeln!(out, "        /// The method id, {}.", m.id);
    let _ = writeln!(out, "        pub const METHOD_ID: u16 = {};", m.id);
    let _ = writeln!(out, "        /// The spec name, `{full}`.");
    let _ = writeln!(out, "        pub const NAME: &'static str = \"{full}\";");

    // encode_args
    let _ = writeln!(
        out,
        "\n        /// Appends the arguments (not the class and method ids) to `dst`.\n        ///\n        /// # Errors\n        /// A shortstr over 255 octets, or a longstr or table over 4 GiB.\n        pub fn encode_args(&self, dst: &mut BytesMut) -> Result<(), WireError> {{"
    );
    if m.args.is_empty() {
        let _ = writeln!(out, "            let _ = dst;");
    }
    for chunk in chunks(&m.args) {
        match chunk {
            Chunk::Single(a) => {
                if let Some(d) = a.ticket_default {
                    let _ = writeln!(out, "            dst.put_u16({d});");
                    continue;
                }
                let f = &a.field;
                let line = match a.ty {
                    Ty::Octet => format!("dst.put_u8(self.{f});"),
                    Ty::Short => format!("dst.put_u16(self.{f});"),
                    Ty::Long => format!("dst.put_u32(self.{f});"),
                    Ty::LongLong | Ty::Timestamp => format!("dst.put_u64(self.{f});"),
                    Ty::ShortStr => {
                        format!("put_shortstr(dst, &self.{f}, \"{full}.{}\")?;", a.spec_name)
                    }
                    Ty::LongStr => {
                        format!("put_longstr(dst, &self.{f}, \"{full}.{}\")?;", a.spec_name)
                    }
                    Ty::Table => format!("put_table(dst, &self.{f})?;"),
                    Ty::Bit => unreachable!("bits are chunked"),
                };
                let _ = writeln!(out, "            {line}");
            }
            Chunk::Bits(bits) => {
                let terms: Vec<String> = bits
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        if i == 0 {
                            format!("u8::from(self.{})", a.field)
                        } else {
                            format!("(u8::from(self.{}) << {i})", a.field)
                        }
                    })
                    .collect();
                let _ = writeln!(out, "            dst.put_u8({});", terms.join(" | "));
            }
        }
    }
    let _ = writeln!(out, "            Ok(())\n        }}");

    // decode_args
    let _ = writeln!(
        out,
        "\n        /// Decodes the arguments from `r`, which must hold exactly them.\n        ///\n        /// # Errors\n        /// Truncated input, trailing octets, invalid UTF-8 in a shortstr or a malformed table.\n        pub(crate) fn decode_args(r: &mut Reader<'_>) -> Result<Self, WireError> {{"
    );
    for chunk in chunks(&m.args) {
        match chunk {
            Chunk::Single(a) => {
                if a.ticket_default.is_some() {
                    let _ = writeln!(out, "            r.u16(\"ticket\")?;");
                    continue;
                }
                let f = &a.field;
                let call = match a.ty {
                    Ty::Octet => "u8",
                    Ty::Short => "u16",
                    Ty::Long => "u32",
                    Ty::LongLong | Ty::Timestamp => "u64",
                    Ty::ShortStr if m.content => "shortstr_lossy",
                    Ty::ShortStr => "shortstr",
                    Ty::LongStr => "longstr",
                    Ty::Table => "table",
                    Ty::Bit => unreachable!("bits are chunked"),
                };
                let _ = writeln!(out, "            let {f} = r.{call}(\"{}\")?;", a.spec_name);
            }
            Chunk::Bits(bits) => {
                let names: Vec<&str> = bits.iter().map(|a| a.spec_name.as_str()).collect();
                let _ = writeln!(
                    out,
                    "            let bits = r.u8(\"{}\")?;",
                    names.join(", ")
                );
                for (i, a) in bits.iter().enumerate() {
                    let _ = writeln!(out, "            let {} = bits & (1 << {i}) != 0;", a.field);
                }
            }
        }
    }
    let _ = writeln!(out, "            r.finish()?;");
    if fields.is_empty() {
        let _ = writeln!(out, "            Ok({})", m.rust);
    } else {
        let names: Vec<&str> = fields.iter().map(|a| a.field.as_str()).collect();
        let _ = writeln!(out, "            Ok({} {{ {} }})", m.rust, names.join(", "));
    }
    let _ = writeln!(out, "        }}\n    }}\n");

    let variant = format!("{}{}", pascal(&class.name), m.rust);
    let _ = writeln!(
        out,
        "    impl From<{}> for Method {{\n        fn from(m: {}) -> Method {{\n            Method::{variant}(m)\n        }}\n    }}\n",
        m.rust, m.rust
    );
}

fn gen_methods(classes: &[ClassSpec]) -> String {
    let mut out = String::new();
    out.push_str("// @generated by build.rs from spec/amqp-rabbitmq-0.9.1.json. Do not edit.\n\n");
    for c in classes {
        let _ = writeln!(
            out,
            "/// Methods of the `{}` class (class id {}).",
            c.name, c.id
        );
        let _ = writeln!(out, "pub mod {} {{", c.name);
        let args = || c.methods.iter().flat_map(|m| m.args.iter());
        let has = |t: Ty| args().any(|a| a.ty == t && a.ticket_default.is_none());
        let put_num = args().any(|a| {
            a.ticket_default.is_some() || !matches!(a.ty, Ty::ShortStr | Ty::LongStr | Ty::Table)
        });
        let mut bytes_items = Vec::new();
        if put_num {
            bytes_items.push("BufMut");
        }
        if has(Ty::LongStr) {
            bytes_items.push("Bytes");
        }
        bytes_items.push("BytesMut");
        let _ = writeln!(out, "    use bytes::{{{}}};\n", bytes_items.join(", "));
        let mut prim = Vec::new();
        if has(Ty::LongStr) {
            prim.push("put_longstr");
        }
        if has(Ty::ShortStr) {
            prim.push("put_shortstr");
        }
        if has(Ty::Table) {
            prim.push("put_table");
        }
        prim.push("Reader");
        let _ = writeln!(out, "    use crate::primitive::{{{}}};", prim.join(", "));
        let mut krate = Vec::new();
        if has(Ty::Table) {
            krate.push("FieldTable");
        }
        krate.push("Method");
        krate.push("WireError");
        let _ = writeln!(out, "    use crate::{{{}}};\n", krate.join(", "));
        for m in &c.methods {
            gen_method(&mut out, c, m);
        }
        out.push_str("}\n\n");
    }

    let all: Vec<(&ClassSpec, &MethodSpec, String)> = classes
        .iter()
        .flat_map(|c| {
            c.methods
                .iter()
                .map(move |m| (c, m, format!("{}{}", pascal(&c.name), m.rust)))
        })
        .collect();

    out.push_str(
        "/// Every AMQP 0-9-1 method, RabbitMQ extensions included, one variant per method.\n",
    );
    out.push_str("#[derive(Clone, Debug, PartialEq)]\npub enum Method {\n");
    for (c, m, v) in &all {
        let _ = writeln!(out, "    /// `{}.{}`.", c.name, m.name);
        let _ = writeln!(out, "    {v}({}::{}),", c.name, m.rust);
    }
    out.push_str("}\n\nimpl Method {\n");

    let simple =
        |out: &mut String, doc: &str, sig: &str, f: &dyn Fn(&ClassSpec, &MethodSpec) -> String| {
            let _ = writeln!(
                out,
                "    /// {doc}\n    #[must_use]\n    pub fn {sig} {{\n        match self {{"
            );
            for (c, m, v) in &all {
                let _ = writeln!(out, "            Method::{v}(_) => {},", f(c, m));
            }
            out.push_str("        }\n    }\n\n");
        };
    simple(
        &mut out,
        "The class id.",
        "class_id(&self) -> u16",
        &|c, _| c.id.to_string(),
    );
    simple(
        &mut out,
        "The method id within its class.",
        "method_id(&self) -> u16",
        &|_, m| m.id.to_string(),
    );
    simple(
        &mut out,
        "The spec name, such as `\"basic.publish\"`.",
        "name(&self) -> &'static str",
        &|c, m| format!("\"{}.{}\"", c.name, m.name),
    );
    simple(
        &mut out,
        "Whether a content header and body frames follow this method.",
        "has_content(&self) -> bool",
        &|_, m| m.content.to_string(),
    );
    simple(
        &mut out,
        "Whether the spec marks this method synchronous (the peer answers with a `-ok` method).",
        "is_synchronous(&self) -> bool",
        &|_, m| m.synchronous.to_string(),
    );

    out.push_str(
        "    /// Appends the class id, method id and arguments (a method frame's payload) to `dst`.\n    ///\n    /// # Errors\n    /// A shortstr over 255 octets, or a longstr or table over 4 GiB; `dst` may then hold a\n    /// partial encoding, which the caller truncates.\n    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {\n        dst.put_u16(self.class_id());\n        dst.put_u16(self.method_id());\n        match self {\n",
    );
    for (_, _, v) in &all {
        let _ = writeln!(out, "            Method::{v}(m) => m.encode_args(dst),");
    }
    out.push_str("        }\n    }\n\n");

    out.push_str(
        "    /// Decodes a method frame's payload: class id, method id and exactly the arguments.\n    ///\n    /// # Errors\n    /// [`WireError::UnknownClass`] / [`WireError::UnknownMethod`] for ids the spec does not\n    /// define, [`WireError::Method`] wrapping the cause for malformed arguments.\n    pub fn decode(payload: &[u8]) -> Result<Method, WireError> {\n        let mut r = Reader::new(payload);\n        let class_id = r.u16(\"class-id\")?;\n        let method_id = r.u16(\"method-id\")?;\n        match (class_id, method_id) {\n",
    );
    for (c, m, v) in &all {
        let _ = writeln!(
            out,
            "            ({}, {}) => {}::{}::decode_args(&mut r).map(Method::{v}).map_err(|e| e.in_method(\"{}.{}\", {}, {})),",
            c.id, m.id, c.name, m.rust, c.name, m.name, c.id, m.id
        );
    }
    let ids: Vec<String> = classes.iter().map(|c| c.id.to_string()).collect();
    let _ = writeln!(
        out,
        "            ({}, _) => Err(WireError::UnknownMethod {{ class_id, method_id }}),",
        ids.join(" | ")
    );
    out.push_str("            _ => Err(WireError::UnknownClass { class_id, method_id }),\n        }\n    }\n}\n\n");

    // Class ids and method names table, for logging and the server's close replies.
    out.push_str("/// The spec name of a (class id, method id) pair, such as `\"basic.publish\"`.\n#[must_use]\npub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {\n    match (class_id, method_id) {\n");
    for (c, m, _) in &all {
        let _ = writeln!(
            out,
            "        ({}, {}) => Some(\"{}.{}\"),",
            c.id, m.id, c.name, m.name
        );
    }
    out.push_str("        _ => None,\n    }\n}\n");
    out
}

/// Test support: a proptest strategy per method (field strategies come from the including test:
/// `arb_shortstr`, `arb_longstr`, `arb_table`), and every method with default arguments.
fn gen_arbitrary(classes: &[ClassSpec]) -> String {
    let mut out = String::new();
    out.push_str("// @generated by build.rs from spec/amqp-rabbitmq-0.9.1.json. Do not edit.\n\n");
    out.push_str("/// A strategy producing every method with arbitrary arguments.\n");
    out.push_str("pub fn arb_method() -> BoxedStrategy<Method> {\n    prop_oneof![\n");
    let mut defaults = String::new();
    for c in classes {
        for m in &c.methods {
            let variant = format!("{}{}", pascal(&c.name), m.rust);
            let path = format!("{}::{}", c.name, m.rust);
            let fields: Vec<&Arg> = m
                .args
                .iter()
                .filter(|a| a.ticket_default.is_none())
                .collect();
            if fields.is_empty() {
                let _ = writeln!(out, "        Just(Method::{variant}({path})).boxed(),");
            } else {
                let strategies: Vec<String> = fields
                    .iter()
                    .map(|a| match a.ty {
                        Ty::Octet => "any::<u8>().boxed()".to_string(),
                        Ty::Short => "any::<u16>().boxed()".to_string(),
                        Ty::Long => "any::<u32>().boxed()".to_string(),
                        Ty::LongLong | Ty::Timestamp => "any::<u64>().boxed()".to_string(),
                        Ty::Bit => "any::<bool>().boxed()".to_string(),
                        Ty::ShortStr => "arb_shortstr().boxed()".to_string(),
                        Ty::LongStr => "arb_longstr().boxed()".to_string(),
                        Ty::Table => "arb_table().boxed()".to_string(),
                    })
                    .collect();
                let names: Vec<&str> = fields.iter().map(|a| a.field.as_str()).collect();
                let _ = writeln!(
                    out,
                    "        ({},).prop_map(|({},)| Method::{variant}({path} {{ {} }})).boxed(),",
                    strategies.join(", "),
                    names.join(", "),
                    names.join(", ")
                );
            }
            let ctor = if fields.is_empty() {
                path.clone()
            } else {
                format!("{path}::default()")
            };
            let _ = writeln!(defaults, "        Method::{variant}({ctor}),");
        }
    }
    out.push_str("    ]\n    .boxed()\n}\n\n");
    out.push_str("/// Every method once, with default arguments.\npub fn all_default_methods() -> Vec<Method> {\n    vec![\n");
    out.push_str(&defaults);
    out.push_str("    ]\n}\n");
    out
}

fn gen_constants(spec: &Value) -> String {
    let mut frames = String::new();
    let mut codes = String::new();
    let mut names = String::new();
    let mut soft = Vec::new();
    for k in spec["constants"].as_array().expect("constants array") {
        let name = k["name"].as_str().expect("constant name");
        let value = k["value"].as_u64().expect("constant value");
        let id = upper(name);
        let frame_constant = name
            .strip_prefix("FRAME-")
            .filter(|_| k.get("class").is_none());
        if let Some(rest) = frame_constant {
            let ty = if rest == "MIN-SIZE" { "u32" } else { "u8" };
            let _ = writeln!(
                frames,
                "/// `{name}` from the spec.\npub const {id}: {ty} = {value};"
            );
        } else {
            let class = k["class"].as_str().unwrap_or("success");
            let _ = writeln!(
                codes,
                "    /// `{name}` ({value}, {class}).\n    pub const {id}: u16 = {value};"
            );
            let _ = writeln!(names, "            {id} => Some(\"{id}\"),");
            if class == "soft-error" {
                soft.push(id);
            }
        }
    }
    let mut out = String::new();
    out.push_str("// @generated by build.rs from spec/amqp-rabbitmq-0.9.1.json. Do not edit.\n\n");
    out.push_str(&frames);
    out.push_str("\n/// Reply codes for `connection.close`, `channel.close` and `basic.return`.\npub mod reply_code {\n");
    out.push_str(&codes);
    out.push_str("\n    /// The spec's name of a reply code (`NOT_FOUND`), as RabbitMQ prefixes its reply texts.\n    #[must_use]\n    pub fn name(code: u16) -> Option<&'static str> {\n        match code {\n");
    out.push_str(&names);
    out.push_str("            _ => None,\n        }\n    }\n\n");
    let _ = writeln!(
        out,
        "    /// Whether the spec classes `code` as a soft error (closes the channel, not the connection).\n    #[must_use]\n    pub fn is_soft_error(code: u16) -> bool {{\n        matches!(code, {})\n    }}\n}}",
        soft.join(" | ")
    );
    out
}

fn main() {
    println!("cargo:rerun-if-changed={SPEC}");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let text = std::fs::read_to_string(manifest_dir.join(SPEC))
        .unwrap_or_else(|e| panic!("reading {SPEC}: {e}"));
    let spec: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {SPEC}: {e}"));
    let classes = load(&spec);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    write(&out_dir.join("methods.rs"), &gen_methods(&classes));
    write(&out_dir.join("constants.rs"), &gen_constants(&spec));
    write(&out_dir.join("arbitrary.rs"), &gen_arbitrary(&classes));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
