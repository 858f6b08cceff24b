//! The operator commands besides `run` and `tick` (pausing and resuming is
//! [`crate::runtime::control`], which the processor reads): the run history ([`history`], `runs list`), following a run (`trigger --wait`,
//! [`follow`]), moving a consumer group's offsets ([`replay`]), reading a topic ([`tail`]) and
//! the one-command local demo ([`demo`]).

pub mod backfill;
pub mod console;
pub mod demo;
pub mod follow;
pub mod history;
pub mod replay;
pub mod tail;
