//! Confluent wire format (magic byte, 4-byte schema id, Avro body) through the Schema Registry,
//! with `schema_registry_converter`. Producers encode with the latest schema registered under
//! the topic's value subject (`<topic>-value`); consumers decode with the writer's schema id.
//!
//! Schemas are registered by `schemas register` ahead of time, never implicitly by a producer,
//! so an incompatible change is caught before it reaches a topic.
//!
//! Encoding keeps one datum writer per topic (the converter's encoder is used to fetch the
//! schema and its id once): a chunk of order-expiration encodes 2,000 records, and building the
//! writer's resolved names for each of them was a visible share of the processor's CPU.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
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

/// The value writer of one topic: the Confluent header of its schema and a writer over it.
struct TopicWriter {
    header: [u8; 5],
    writer: GenericDatumWriter<'static>,
}

/// Encoder and decoder sharing one registry configuration; both cache schemas.
#[derive(Clone)]
pub struct Codec {
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
    writers: Arc<RwLock<HashMap<String, Arc<TopicWriter>>>>,
}

impl Codec {
    pub fn new(settings: &Settings) -> Result<Codec, CodecError> {
        Ok(Codec {
            encoder: Arc::new(AvroEncoder::new(sr_settings(settings)?)),
            decoder: Arc::new(AvroDecoder::new(sr_settings(settings)?)),
            writers: Arc::new(RwLock::new(HashMap::new())),
        })
    }

    /// Encodes a record value for `topic` with the latest schema of `<topic>-value` (as first
    /// fetched by this codec; a schema registered later is used by the next process).
    pub async fn encode(&self, topic: &str, value: Value) -> Result<Vec<u8>, CodecError> {
        let w = self.writer(topic).await?;
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&w.header);
        w.writer.write_value(&mut bytes, value).map_err(|e| CodecError::Encode {
            subject: format!("{topic}-value"),
            message: e.to_string(),
            retriable: false,
        })?;
        Ok(bytes)
    }

    /// Encodes an emitted record's payload with `topic`'s latest registered schema.
    pub async fn encode_payload(&self, topic: &str, payload: crate::wire::Payload) -> Result<Vec<u8>, CodecError> {
        let direct = match payload {
            crate::wire::Payload::Value(v) => return self.encode(topic, v).await,
            crate::wire::Payload::Direct(d) => d,
        };
        let w = self.writer(topic).await?;
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&w.header);
        direct.write(&w.writer, &mut bytes).map_err(|e| CodecError::Encode {
            subject: format!("{topic}-value"),
            message: e.to_string(),
            retriable: false,
        })?;
        Ok(bytes)
    }

    async fn writer(&self, topic: &str) -> Result<Arc<TopicWriter>, CodecError> {
        if let Some(w) = self.writers.read().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(w.clone());
        }
        let subject = format!("{topic}-value");
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        let schema = self.encoder.get_schema_and_id(&subject, strategy).await.map_err(|e| CodecError::Encode {
            subject: subject.clone(),
            message: describe(&e),
            retriable: e.retriable,
        })?;
        // The writer borrows its schema for as long as the process encodes for the topic:
        // one small leak per topic (a process writes to a handful), never per record.
        let leaked: &'static Schema = Box::leak(Box::new(schema.parsed.clone()));
        let writer = GenericDatumWriter::builder(leaked).build().map_err(|e| CodecError::Encode {
            subject,
            message: e.to_string(),
            retriable: false,
        })?;
        let mut header = [0u8; 5];
        header[1..].copy_from_slice(&schema.id.to_be_bytes());
        let w = Arc::new(TopicWriter { header, writer });
        let mut writers = self.writers.write().unwrap_or_else(|p| p.into_inner());
        Ok(writers.entry(topic.to_string()).or_insert(w).clone())
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
