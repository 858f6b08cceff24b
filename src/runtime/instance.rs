//! Which processor instance this process is: `processor.instance_id` when set, otherwise the
//! host name and a slot — the lowest number no other live processor of the same
//! transactional-id prefix on this host holds.
//!
//! Why a slot and not the process id: the transactional id is prefix + instance id, and only
//! a producer with the *same* transactional id fences an earlier incarnation at once (its
//! `init_transactions` aborts what the dead one left open). With the process id, a restarted
//! processor got a new transactional id, and readers of the partitions its predecessor was
//! writing waited for that open transaction to time out. A slot is held by an exclusive lock
//! on a file under the system's temporary directory for the life of the process; the kernel
//! drops the lock when the process dies (SIGKILL included), so a restart on the same host takes
//! the slot back, and two processors started side by side never share one (which would make
//! them fence each other in turn).

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::Settings;

/// More processors of one prefix on one host than this is a misconfiguration, not a need.
const MAX_SLOTS: usize = 256;

/// Slots this process holds, by prefix: the id and the locked file that keeps it.
static HELD: Mutex<BTreeMap<String, (String, File)>> = Mutex::new(BTreeMap::new());

/// This process's instance id for `settings` (the same answer on every call).
pub fn id(settings: &Settings) -> String {
    if !settings.processor.instance_id.is_empty() {
        return settings.processor.instance_id.clone();
    }
    let prefix = &settings.processor.transactional_id_prefix;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((id, _)) = held.get(prefix) {
        return id.clone();
    }
    let host = host_name();
    match take_slot(prefix) {
        Ok((slot, file)) => {
            let id = format!("{host}-{slot}");
            held.insert(prefix.clone(), (id.clone(), file));
            id
        }
        Err(why) => {
            // Still a working processor, only without the fencing of its predecessor.
            let id = format!("{host}-pid{}", std::process::id());
            tracing::warn!(%why, instance = %id, "no instance slot could be locked; using the process id (set processor.instance_id to a stable name)");
            id
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// The lock files' folder and the per-prefix file name stem (the prefix sanitised, plus a hash
/// of it so two prefixes that sanitise alike stay apart).
fn lock_path(prefix: &str, slot: usize) -> PathBuf {
    let safe: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(64).collect();
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, prefix.as_bytes()).simple().to_string();
    std::env::temp_dir().join("scheduled-jobs-instances").join(format!("{safe}-{}.{slot}.lock", &digest[..8]))
}

fn take_slot(prefix: &str) -> Result<(usize, File), String> {
    let dir = lock_path(prefix, 0).parent().map(PathBuf::from).ok_or("no folder for instance locks")?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for slot in 0..MAX_SLOTS {
        let path = lock_path(prefix, slot);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok((slot, file)),
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("all {MAX_SLOTS} slots of prefix `{prefix}` are held on this host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_slot_is_skipped_and_freed_with_its_holder() {
        let prefix = format!("unit-{}", uuid::Uuid::new_v4());
        let (a, fa) = take_slot(&prefix).unwrap();
        let (b, _fb) = take_slot(&prefix).unwrap();
        assert_eq!((a, b), (0, 1), "the second holder gets the next slot");
        drop(fa);
        let (c, _fc) = take_slot(&prefix).unwrap();
        assert_eq!(c, 0, "a slot whose holder is gone is taken back");
    }

    #[test]
    fn a_configured_id_wins_and_a_derived_one_is_stable() {
        let mut s = Settings::default();
        s.processor.transactional_id_prefix = format!("unit-{}", uuid::Uuid::new_v4());
        let derived = id(&s);
        assert_eq!(id(&s), derived, "one answer per process");
        assert!(derived.ends_with("-0"), "{derived}");
        s.processor.instance_id = "pod-7".into();
        assert_eq!(id(&s), "pod-7");
    }
}
