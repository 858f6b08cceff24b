//! `schemas register` / `schemas check` against the real registry: BACKWARD pinned, idempotent,
//! an incompatible change refused with the reason spelled out.

use std::process::Command;

use scheduled_jobs::kafka::schemas::{check, load, register, Registry, Status, SubjectSchema};
use scheduled_jobs::kafka::topics::configured_specs;

use crate::common::{binary, repo_root, settings, unique};

fn subject_schema(subject: &str, text: &str) -> SubjectSchema {
    SubjectSchema {
        subject: subject.into(),
        path: "test.avsc".into(),
        text: text.into(),
        parsed: apache_avro::Schema::parse_str(text).unwrap(),
    }
}

const V1: &str = r#"{"type":"record","name":"T","namespace":"t","fields":[{"name":"a","type":"string"}]}"#;
const V2_COMPATIBLE: &str =
    r#"{"type":"record","name":"T","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
const V2_INCOMPATIBLE: &str =
    r#"{"type":"record","name":"T","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"c","type":"int"}]}"#;

#[tokio::test]
async fn register_is_idempotent_and_refuses_incompatible_changes() {
    let s = settings();
    let registry = Registry::new(&s).unwrap();
    let subject = format!("{}-value", unique("schemas"));

    let first = register(&registry, &[subject_schema(&subject, V1)]).await.unwrap();
    assert_eq!(first[0].status, Status::New);
    let id = first[0].id.unwrap();
    let again = register(&registry, &[subject_schema(&subject, V1)]).await.unwrap();
    assert!(matches!(again[0].status, Status::Current { id: i, .. } if i == id), "{:?}", again[0].status);

    let bad = check(&registry, &[subject_schema(&subject, V2_INCOMPATIBLE)]).await.unwrap();
    match &bad[0].status {
        Status::Incompatible { reason, .. } => assert!(reason.contains('c'), "reason names the field: {reason}"),
        other => panic!("expected incompatible, got {other:?}"),
    }
    let err = register(&registry, &[subject_schema(&subject, V2_COMPATIBLE), subject_schema(&subject, V2_INCOMPATIBLE)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing registered") && err.contains(&subject), "{err}");
    let still = registry.latest(&subject).await.unwrap().unwrap();
    assert_eq!(still.id, id, "nothing was registered by the refused call");

    let good = register(&registry, &[subject_schema(&subject, V2_COMPATIBLE)]).await.unwrap();
    assert!(matches!(good[0].status, Status::Compatible { latest_version: 1 }), "{:?}", good[0].status);
    assert_ne!(good[0].id, Some(id));
}

/// Runs the binary in the repository with `env` on top of the environment.
fn run_with(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary()).current_dir(repo_root()).envs(env.iter().copied()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Under a private topic prefix, so the test's subjects are its own and the shared registry's
/// real subjects are never changed by a test.
#[test]
fn cli_registers_the_repo_schemas_and_checks_them() {
    crate::common::stack();
    let prefix = format!("{}.", unique("cli-schemas"));
    let overlay = crate::common::single_broker_overlay();
    let overlay = overlay.to_str().expect("utf-8 path");
    let run = |args: &[&str]| run_with(&[("SJ_TOPICS__PREFIX", prefix.as_str()), ("SJ_TOPICS__OVERRIDES", overlay)], args);
    let (ok, _, err) = run(&["topics", "apply"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["schemas", "register"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["schemas", "check"]);
    assert!(ok, "{out}{err}");
    assert!(out.lines().all(|l| l.starts_with("unchanged")), "{out}");
    let topics = std::fs::read_dir(repo_root().join("topics")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "toml")).count();
    assert_eq!(out.lines().count(), topics, "one subject per topic of topics/:\n{out}");
}

/// Today's schemas against the versions registered before the evolution rules (the files of
/// `fixtures/avro-before-evolution`, registered under private subjects as production has
/// them): `schemas check` passes (every subject a compatible change, every rule kept), and
/// `schemas register` registers each as a new BACKWARD-compatible version — enum defaults,
/// `uuid` event ids and the `timeZone` fields included. A schema whose change is only docs
/// has the same canonical form, which the registry treats as the same version.
#[tokio::test]
async fn the_repo_schemas_register_as_backward_compatible_over_the_versions_before_them() {
    let mut s = settings();
    s.topics.prefix = format!("{}.", unique("evolution"));
    let specs = configured_specs(&s).unwrap();
    let registry = Registry::new(&s).unwrap();
    let fixtures = repo_root().join("tests/it/fixtures/avro-before-evolution");
    // Schemas added since have no earlier version: they register as new.
    let old_specs: Vec<_> = specs.iter().filter(|t| fixtures.join(&t.value_schema).exists()).cloned().collect();
    let before = load(&fixtures, &old_specs).unwrap();
    let now = load(&repo_root().join("avro"), &old_specs).unwrap();
    let registered = register(&registry, &before).await.unwrap();
    assert!(registered.iter().all(|o| o.status == Status::New), "{registered:#?}");
    let evolved: Vec<String> = before
        .iter()
        .zip(&now)
        .filter(|(b, n)| b.parsed.canonical_form() != n.parsed.canonical_form())
        .map(|(b, _)| b.subject.clone())
        .collect();
    assert!(evolved.len() >= 8, "the enum defaults, uuid ids and time zones change most schemas: {evolved:?}");

    let env = [("SJ_TOPICS__PREFIX", s.topics.prefix.as_str())];
    let (ok, out, err) = run_with(&env, &["schemas", "check"]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("BREAKS RULE") && !out.contains("INCOMPATIBLE"), "{out}");
    for subject in &evolved {
        assert!(out.lines().any(|l| l.starts_with("compatible") && l.contains(&format!(" {subject} "))), "{subject}:\n{out}");
    }

    let (ok, out, err) = run_with(&env, &["schemas", "register"]);
    assert!(ok, "{out}{err}");
    for subject in &evolved {
        assert!(out.lines().any(|l| l.starts_with("evolved") && l.contains(&format!(" {subject} "))), "{subject}:\n{out}");
        assert_eq!(registry.latest(subject).await.unwrap().unwrap().version, 2, "{subject}");
    }
    let (ok, out, err) = run_with(&env, &["schemas", "check"]);
    assert!(ok && out.lines().all(|l| l.starts_with("unchanged")), "{out}{err}");
}

/// A schema that breaks the evolution rules fails `schemas check` with the file and field
/// named: here a copy of `avro/` whose RunResult has a new field without a default or doc
/// and whose SchedulerTick enum has lost its default, checked against the registered
/// repository schemas.
#[tokio::test]
async fn schemas_check_names_the_schema_and_field_breaking_a_rule() {
    let mut s = settings();
    s.topics.prefix = format!("{}.", unique("rules"));
    let specs = configured_specs(&s).unwrap();
    let registry = Registry::new(&s).unwrap();
    register(&registry, &load(&repo_root().join("avro"), &specs).unwrap()).await.unwrap();

    let dir = std::env::temp_dir().join(unique("avro"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo_root().join("avro")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let edit = |file: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        f(&mut json);
        std::fs::write(dir.join(file), json.to_string()).unwrap();
    };
    edit("RunResult.avsc", &|j| j["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "region", "type": "string"})));
    edit("SchedulerTick.avsc", &|j| {
        let t = &mut j["fields"][4]["type"];
        t.as_object_mut().unwrap().remove("default");
        t["symbols"] = serde_json::json!(["SCHEDULED", "CATCH_UP", "MANUAL", "UNKNOWN", "BACKFILL"]);
    });

    let dir_text = dir.to_string_lossy().into_owned();
    let (ok, out, err) = run_with(&[("SJ_TOPICS__PREFIX", s.topics.prefix.as_str()), ("SJ_SCHEMAS__DIR", dir_text.as_str())], &["schemas", "check"]);
    assert!(!ok, "must fail:\n{out}{err}");
    let broken: Vec<&str> = out.lines().filter(|l| l.starts_with("BREAKS RULE")).collect();
    let has = |file: &str, field: &str, what: &str| {
        assert!(
            broken.iter().any(|l| l.contains(file) && l.contains(&format!("field `{field}`")) && l.contains(what)),
            "no line naming {file} `{field}` ({what}):\n{out}"
        )
    };
    has("RunResult.avsc", "region", "has no doc");
    has("RunResult.avsc", "region", "is new since registered version 1 and has no default");
    has("SchedulerTick.avsc", "trigger", "enum com.ecommerce.scheduler.TickTrigger has no default symbol");
    assert_eq!(broken.len(), 3, "{out}");
    assert!(err.contains("3 schema evolution rule(s) broken"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
