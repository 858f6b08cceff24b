//! The rules every schema of `avro/` follows so that it can evolve without breaking the
//! consumers built today (docs/decisions/2026-11-29-schema-evolution.md), checked by
//! `schemas check`:
//!
//! 1. every enum has a default symbol (ours: `UNKNOWN`, the last one), so a reader built with
//!    this schema resolves a symbol added later to it instead of failing on the record;
//! 2. every field has a `doc` saying what it means (units, when null, what its default means);
//! 3. a field that is new relative to the version registered in the registry has a default,
//!    so the new schema can read every record already in the topic.
//!
//! [`lint`] (rules 1 and 2) and [`new_fields_without_default`] (rule 3, given the registered
//! schema) are pure functions of parsed schemas; the registry is only where rule 3's
//! comparison version comes from. The registry's own BACKWARD check stays the final word on
//! compatibility; these rules are the ones it does not enforce (a missing enum default or doc
//! is compatible, just not evolvable or understandable).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use apache_avro::schema::Schema;

/// Which rule a schema breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The enum (named) has no default symbol.
    EnumWithoutDefault { enum_name: String },
    FieldWithoutDoc,
    /// The field is not in the registered version and has no default.
    NewFieldWithoutDefault { registered_version: u32 },
}

/// One broken rule: where (the schema file and the field's path in the record, e.g.
/// `topProducts[].productId`) and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    /// The top-level record's full name.
    pub record: String,
    /// Path of the field within the record: `a.b` for a nested record's field, `a[]` inside
    /// an array's items, `a{}` inside a map's values.
    pub field: String,
    pub rule: Rule,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.file.display();
        let (record, field) = (&self.record, &self.field);
        match &self.rule {
            Rule::EnumWithoutDefault { enum_name } => write!(
                f,
                "{file}: {record}: field `{field}`: enum {enum_name} has no default symbol (add \"UNKNOWN\" as the last symbol and \"default\": \"UNKNOWN\")"
            ),
            Rule::FieldWithoutDoc => write!(f, "{file}: {record}: field `{field}` has no doc (say what it means, units, when null, what its default means)"),
            Rule::NewFieldWithoutDefault { registered_version } => write!(
                f,
                "{file}: {record}: field `{field}` is new since registered version {registered_version} and has no default (records already written do not have it)"
            ),
        }
    }
}

/// Rules 1 and 2 for one schema file: every enum has a default, every field a doc. Named
/// types are checked where they are defined (a reference to one is not checked again).
pub fn lint(file: impl Into<PathBuf>, schema: &Schema) -> Vec<Violation> {
    let file = file.into();
    let record = top_name(schema);
    let mut out = Vec::new();
    walk(schema, &mut |path, s| match s {
        Schema::Record(r) => {
            for f in &r.fields {
                if f.doc.as_deref().is_none_or(|d| d.trim().is_empty()) {
                    out.push(Violation { file: file.clone(), record: record.clone(), field: join(path, &f.name), rule: Rule::FieldWithoutDoc });
                }
            }
        }
        Schema::Enum(e) if e.default.is_none() => out.push(Violation {
            file: file.clone(),
            record: record.clone(),
            field: path.to_string(),
            rule: Rule::EnumWithoutDefault { enum_name: e.name.fullname(None) },
        }),
        _ => {}
    });
    out
}

/// Rule 3: the fields of `local` that the `registered` version (number `registered_version`)
/// does not have, by record (full name) and field name or alias, and that have no default.
/// A record the registered version does not have at all is not compared: it can only be the
/// type of a new field (checked itself) or a changed type, which the registry judges.
pub fn new_fields_without_default(file: impl Into<PathBuf>, local: &Schema, registered: &Schema, registered_version: u32) -> Vec<Violation> {
    let file = file.into();
    let record = top_name(local);
    let mut known: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    walk(registered, &mut |_, s| {
        if let Schema::Record(r) = s {
            known.insert(r.name.fullname(None), r.fields.iter().map(|f| f.name.clone()).collect());
        }
    });
    let mut out = Vec::new();
    walk(local, &mut |path, s| {
        let Schema::Record(r) = s else { return };
        let Some(before) = known.get(&r.name.fullname(None)) else { return };
        for f in &r.fields {
            let existed = before.contains(&f.name) || f.aliases.iter().any(|a| before.contains(a));
            if !existed && f.default.is_none() {
                out.push(Violation {
                    file: file.clone(),
                    record: record.clone(),
                    field: join(path, &f.name),
                    rule: Rule::NewFieldWithoutDefault { registered_version },
                });
            }
        }
    });
    out
}

fn top_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Visits `schema` and every schema defined inside it, with the path of the field that holds
/// it. A named type is visited once, where it is defined.
fn walk(schema: &Schema, visit: &mut dyn FnMut(&str, &Schema)) {
    fn go(schema: &Schema, path: &str, seen: &mut BTreeSet<String>, visit: &mut dyn FnMut(&str, &Schema)) {
        match schema {
            Schema::Record(r) => {
                if !seen.insert(r.name.fullname(None)) {
                    return;
                }
                visit(path, schema);
                for f in &r.fields {
                    go(&f.schema, &join(path, &f.name), seen, visit);
                }
            }
            Schema::Enum(e) => {
                if seen.insert(e.name.fullname(None)) {
                    visit(path, schema);
                }
            }
            Schema::Array(a) => go(&a.items, &format!("{path}[]"), seen, visit),
            Schema::Map(m) => go(&m.types, &format!("{path}{{}}"), seen, visit),
            Schema::Union(u) => {
                for v in u.variants() {
                    go(v, path, seen, visit);
                }
            }
            other => visit(path, other),
        }
    }
    go(schema, "", &mut BTreeSet::new(), visit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Schema {
        Schema::parse(&json).unwrap()
    }

    /// A record that follows every rule, with a nested record, an array, a map and a union.
    fn good() -> serde_json::Value {
        serde_json::json!({
            "type": "record", "name": "Alert", "namespace": "t", "doc": "d",
            "fields": [
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}, "doc": "The id."},
                {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["A", "UNKNOWN"], "default": "UNKNOWN"}, "doc": "The state."},
                {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
                    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["X", "UNKNOWN"], "default": "UNKNOWN"}, "doc": "The kind."}
                ]}}, "doc": "The items."},
                {"name": "again", "type": "State", "doc": "A reference."},
                {"name": "note", "type": ["null", "string"], "default": null, "doc": "A note; null when none."}
            ]
        })
    }

    fn rendered(v: &[Violation]) -> Vec<String> {
        v.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn a_schema_following_the_rules_passes() {
        assert_eq!(lint("good.avsc", &parse(good())), Vec::new());
        assert_eq!(new_fields_without_default("good.avsc", &parse(good()), &parse(good()), 1), Vec::new());
    }

    #[test]
    fn an_enum_without_default_is_named_with_its_field() {
        let mut json = good();
        json["fields"][2]["type"]["items"]["fields"][0]["type"] = serde_json::json!({"type": "enum", "name": "Kind", "symbols": ["X"]});
        let v = lint("avro/Bad.avsc", &parse(json));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].field.as_str(), &v[0].rule), ("items[].kind", &Rule::EnumWithoutDefault { enum_name: "t.Kind".into() }));
        let line = v[0].to_string();
        assert!(line.starts_with("avro/Bad.avsc: t.Alert: field `items[].kind`: enum t.Kind has no default"), "{line}");
    }

    #[test]
    fn a_field_without_doc_is_named() {
        let mut json = good();
        json["fields"][4].as_object_mut().unwrap().remove("doc");
        json["fields"][2]["type"]["items"]["fields"][0]["doc"] = serde_json::json!(" ");
        let v = lint("avro/Bad.avsc", &parse(json));
        assert_eq!(
            rendered(&v),
            [
                "avro/Bad.avsc: t.Alert: field `note` has no doc (say what it means, units, when null, what its default means)",
                "avro/Bad.avsc: t.Alert: field `items[].kind` has no doc (say what it means, units, when null, what its default means)",
            ]
        );
    }

    #[test]
    fn a_new_field_without_default_is_named_and_one_with_a_default_or_alias_is_not() {
        let registered = parse(good());
        let mut json = good();
        let fields = json["fields"].as_array_mut().unwrap();
        fields.push(serde_json::json!({"name": "timeZone", "type": "string", "doc": "The zone."}));
        fields.push(serde_json::json!({"name": "count", "type": "int", "default": 0, "doc": "A count."}));
        fields[4] = serde_json::json!({"name": "remark", "aliases": ["note"], "type": ["null", "string"], "doc": "Renamed."});
        json["fields"][2]["type"]["items"]["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "weight", "type": "long", "doc": "Grams."}));
        let v = new_fields_without_default("avro/Alert.avsc", &parse(json.clone()), &registered, 3);
        assert_eq!(
            rendered(&v),
            [
                "avro/Alert.avsc: t.Alert: field `timeZone` is new since registered version 3 and has no default (records already written do not have it)",
                "avro/Alert.avsc: t.Alert: field `items[].weight` is new since registered version 3 and has no default (records already written do not have it)",
            ]
        );
        assert_eq!(lint("avro/Alert.avsc", &parse(json)), Vec::new(), "rules 1 and 2 hold");
    }

    /// Every schema of the repository follows rules 1 and 2.
    #[test]
    fn the_repository_schemas_follow_the_rules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "avsc") {
                continue;
            }
            files += 1;
            let schema = Schema::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let v = lint(&path, &schema);
            assert!(v.is_empty(), "{}", rendered(&v).join("\n"));
        }
        assert!(files >= 10, "found {files} schemas in {}", dir.display());
    }
}
