//! Confluent wire format (magic byte, 4-byte schema id, Avro body) through the Schema Registry,
//! with `schema_registry_converter`. Producers encode with the latest schema registered under
//! the topic's value subject (`<topic>-value`); consumers decode with the writer's schema id.
//!
//! Schemas are registered by `schemas register` ahead of time, never implicitly by a producer,
//! so an incompatible change is caught before it reaches a topic.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::error::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("schema registry settings: {0}")]
    Settings(String),
    /// Bytes that are not Confluent-framed Avro, or do not match their schema: bad input.
    #[error("cannot decode record: {0}")]
    Decode(String),
    #[error("cannot encode record for `{subject}`: {message}")]
    Encode { subject: String, message: String, retriable: bool },
}

impl CodecError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CodecError::Encode { retriable: true, .. } => ErrorClass::Retry,
            _ => ErrorClass::Fatal,
        }
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{} ({c})", e.error),
        None => e.error.clone(),
    }
}

/// Settings for the converter's registry client, from ours.
pub fn sr_settings(settings: &Settings) -> Result<SrSettings, CodecError> {
    let mut b = SrSettings::new_builder(settings.registry.url.clone());
    b.no_proxy().set_timeout(Duration::from_millis(settings.registry.timeout_ms));
    if let Some(user) = &settings.registry.username {
        let password = settings.registry.password.as_ref().map(|p| p.expose_secret().to_string());
        b.set_basic_authorization(user, password.as_deref());
    }
    b.build().map_err(|e| CodecError::Settings(describe(&e)))
}

/// A decoded record: the value, its writer schema and that schema's registry id.
pub struct Decoded {
    pub value: Value,
    pub schema: Schema,
    pub schema_id: u32,
}

/// Encoder and decoder sharing one registry configuration; both cache schemas.
#[derive(Clone)]
pub struct Codec {
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
}

impl Codec {
    pub fn new(settings: &Settings) -> Result<Codec, CodecError> {
        Ok(Codec {
            encoder: Arc::new(AvroEncoder::new(sr_settings(settings)?)),
            decoder: Arc::new(AvroDecoder::new(sr_settings(settings)?)),
        })
    }

    /// Encodes a record value for `topic` with the latest schema of `<topic>-value`.
    pub async fn encode(&self, topic: &str, value: Value) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        self.encoder.encode_value(value, &strategy).await.map_err(|e| CodecError::Encode {
            subject: format!("{topic}-value"),
            message: describe(&e),
            retriable: e.retriable,
        })
    }

    /// Decodes Confluent-framed Avro bytes.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        match self.decoder.decode_with_schema(Some(bytes)).await {
            Ok(Some(d)) => Ok(Decoded { value: d.value, schema: d.schema.parsed.clone(), schema_id: d.schema.id }),
            Ok(None) => Err(CodecError::Decode("empty payload".into())),
            Err(e) => Err(CodecError::Decode(describe(&e))),
        }
    }
}
