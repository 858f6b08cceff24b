//! Topic names. A [`Topic`] is a base name from `topics/` (the configured prefix is added by
//! `Settings::topic`); the engine's topics are declared here, and each job declares its output
//! topics in its own module (`impl Topic { pub const ...: Topic = Topic::named(...) }`), so a
//! new job needs no edit here.

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
