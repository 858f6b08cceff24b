//! The operator commands besides `run` and `tick`: pausing and resuming jobs ([`control`]),
//! the run history ([`history`], `runs list`), following a run (`trigger --wait`,
//! [`follow`]), moving a consumer group's offsets ([`replay`]), reading a topic ([`tail`]) and
//! the one-command local demo ([`demo`]).

pub mod control;
pub mod demo;
pub mod follow;
pub mod history;
pub mod replay;
pub mod tail;
