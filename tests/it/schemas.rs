//! `schemas register` / `schemas check` against the real registry: BACKWARD pinned, idempotent,
//! an incompatible change refused with the reason spelled out.

use std::process::Command;

use scheduled_jobs::kafka::schemas::{check, register, Registry, Status, SubjectSchema};

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

#[test]
fn cli_registers_the_repo_schemas_and_checks_them() {
    crate::common::stack();
    let run = |args: &[&str]| {
        let out = Command::new(binary()).current_dir(repo_root()).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
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
