//! The long-running processes and what they need to run: the processor (`run`), the tick
//! producer (`tick`), the pause state the processor obeys (`pause`/`resume` write it, and a
//! failure streak), their
//! `/metrics`, `/healthz` and `/readyz` endpoint, graceful shutdown, the backoff they wait out
//! transient failures with, and the fault points of the crash tests.

pub mod control;
pub mod fault;
pub mod instance;
pub mod metrics;
pub mod processor;
pub mod retry;
pub mod shutdown;
pub mod streak;
pub mod tick;
