//! A transaction plan becomes bytes: each record encoded with its topic's latest schema, and
//! the metric samples of what the transaction writes (counted once it commits).

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};

use super::committer::Ready;
use super::run::{Out, TxnPlan};
use super::{Processor, ProcessorError};
use crate::runtime::metrics::Sample;
use crate::wire::internal::Outcome;

impl Processor {
    /// Encodes a plan for the committer and counts what it writes (once committed).
    pub(super) async fn encode(&self, plan: TxnPlan, m: &OwnedMessage) -> Result<Ready, ProcessorError> {
        let kind = if m.topic() == self.names.tick { "tick" } else { "work-item" };
        self.encode_plan(plan, Some(kind)).await
    }

    /// Encodes a plan; `handled`: the kind of consumed record it is the transaction of, if any.
    pub(super) async fn encode_plan(&self, plan: TxnPlan, handled: Option<&'static str>) -> Result<Ready, ProcessorError> {
        let mut ready = Ready { records: Vec::with_capacity(plan.out.len()), ledger: Vec::new(), samples: plan.samples, fault: plan.fault };
        let mut emitted: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for out in plan.out {
            let (topic, key, bytes) = match out {
                Out::Event { topic, key, bytes } => {
                    *emitted.entry(topic.clone()).or_default() += 1;
                    (topic, key, bytes)
                }
                Out::WorkItem(item) => (self.names.work_items.as_str().into(), item.key(), self.codec.encode(&self.names.work_items, item.to_avro()).await?),
                Out::Ledger(key, entry) => {
                    let bytes = self.codec.encode(&self.names.ledger, entry.to_avro()).await?;
                    ready.ledger.push((key.clone(), entry));
                    (self.names.ledger.as_str().into(), key, bytes)
                }
                Out::Result(result) => {
                    let seconds = result.duration_ms as f64 / 1000.0;
                    ready.samples.push(Sample::Run { job: result.job.clone(), outcome: result.outcome.as_str().to_string(), seconds });
                    match result.outcome {
                        Outcome::Missed => ready.samples.push(Sample::MissedFireTime { job: result.job.clone() }),
                        Outcome::Succeeded => ready.samples.push(Sample::Succeeded {
                            job: result.job.clone(),
                            at: result.finished_at.timestamp_millis() as f64 / 1000.0,
                        }),
                        _ => {}
                    }
                    (self.names.results.as_str().into(), result.job.clone(), self.codec.encode(&self.names.results, result.to_avro()).await?)
                }
                Out::Tick { key, bytes } => (self.names.tick.as_str().into(), key, bytes),
                Out::DeadLetter { key, letter } => {
                    ready.samples.push(Sample::DeadLetter { reason: letter.reason_code.clone() });
                    (self.names.dead_letters.as_str().into(), key, self.codec.encode(&self.names.dead_letters, letter.to_avro()).await?)
                }
            };
            ready.records.push((topic, key, bytes));
        }
        ready.samples.extend(emitted.into_iter().map(|(topic, count)| Sample::Emitted { topic: topic.to_string(), count }));
        if let Some(kind) = handled {
            ready.samples.push(Sample::Handled { kind });
        }
        Ok(ready)
    }

}
