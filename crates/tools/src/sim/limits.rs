//! Dify's two overload answers, as counters with guards: the PostgreSQL connection pool
//! ([`DbGuard`], 500 "too many clients") and `APP_MAX_ACTIVE_REQUESTS` per app key
//! ([`AppGuard`], 429).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections in use and runs per app. Always counted, so a limit changed at run time by
/// `set_config` sees the true current usage.
#[derive(Default)]
pub(crate) struct Limits {
    db_in_use: Mutex<usize>,
    apps: Mutex<HashMap<String, usize>>,
}

impl Limits {
    /// Takes a DB connection, or `None` when `limit` connections are already in use.
    pub(crate) fn try_db(self: &Arc<Self>, limit: Option<usize>) -> Option<DbGuard> {
        let mut n = self.db_in_use.lock().unwrap_or_else(PoisonError::into_inner);
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        Some(DbGuard { limits: self.clone() })
    }

    /// Registers an active run of app `key`, or `None` when the app already has `limit`.
    pub(crate) fn try_app(self: &Arc<Self>, key: &str, limit: Option<usize>) -> Option<AppGuard> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        let n = apps.entry(key.to_owned()).or_insert(0);
        if limit.is_some_and(|l| *n >= l) {
            if *n == 0 {
                apps.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(AppGuard { limits: self.clone(), key: key.to_owned() })
    }

    #[cfg(test)]
    fn db_in_use(&self) -> usize {
        *self.db_in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A held DB connection; released on drop.
pub(crate) struct DbGuard {
    limits: Arc<Limits>,
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        let mut n = self.limits.db_in_use.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
    }
}

/// An active run counted against its app; released on drop.
pub(crate) struct AppGuard {
    limits: Arc<Limits>,
    key: String,
}

impl Drop for AppGuard {
    fn drop(&mut self) {
        let mut apps = self.limits.apps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = apps.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                apps.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_limit_counts_and_releases() {
        let l = Arc::new(Limits::default());
        let a = l.try_db(Some(2));
        let b = l.try_db(Some(2));
        assert!(a.is_some() && b.is_some());
        assert!(l.try_db(Some(2)).is_none());
        drop(a);
        assert!(l.try_db(Some(2)).is_some());
        assert_eq!(l.db_in_use(), 1);
        assert!(l.try_db(None).is_some());
    }

    #[test]
    fn app_limit_is_per_key() {
        let l = Arc::new(Limits::default());
        let a1 = l.try_app("app-a", Some(1));
        assert!(a1.is_some());
        assert!(l.try_app("app-a", Some(1)).is_none());
        assert!(l.try_app("app-b", Some(1)).is_some());
        drop(a1);
        assert!(l.try_app("app-a", Some(1)).is_some());
        assert!(l.try_app("app-z", Some(0)).is_none());
        assert!(l.apps.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
