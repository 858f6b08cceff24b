//! Topic names: every topic of the contract, by its base name in `topics/` (the configured
//! prefix is added by `Settings::topic`). A new output topic is one line here, next to its
//! `topics/<name>.toml` file and the event struct that is written to it (`wire::events`).

/// A topic by its base name, e.g. `order.cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(&'static str);

// Named like the enum variants these constants once were, so `Topic::Tick` reads the same
// wherever a topic is named.
#[allow(non_upper_case_globals)]
impl Topic {
    pub const Tick: Topic = Topic::named("scheduler.tick");
    pub const WorkItems: Topic = Topic::named("scheduled-jobs.work-items");
    pub const RunLedger: Topic = Topic::named("scheduled-jobs.run-ledger");
    pub const RunResults: Topic = Topic::named("scheduled-jobs.run-results");
    pub const DeadLetters: Topic = Topic::named("scheduled-jobs.dead-letters");
    pub const OrderCancelled: Topic = Topic::named("order.cancelled");
    pub const OrderExpirationNotification: Topic = Topic::named("order.expiration.notification");
    pub const StockSyncAlert: Topic = Topic::named("stock.sync.alert");
    pub const StockSyncRunSummary: Topic = Topic::named("stock.sync.run.summary");
    pub const DailyStatistics: Topic = Topic::named("daily.statistics");
    pub const JobReport: Topic = Topic::named("job.report");
}

impl Topic {
    /// The topic whose file is `topics/<name>.toml`.
    pub const fn named(name: &'static str) -> Topic {
        Topic(name)
    }

    pub fn base_name(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
