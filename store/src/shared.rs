//! Things this process opens once and shares while anyone holds them: a database per file or
//! URL, a key cache per database. Each is made under a lock, so two components asking at once
//! get the same one.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

pub(crate) struct OpenOnce<K, T> {
    open: Mutex<Vec<(K, Weak<T>)>>,
    making: tokio::sync::Mutex<()>,
}

impl<K: PartialEq, T> OpenOnce<K, T> {
    pub(crate) const fn new() -> Self {
        OpenOnce {
            open: Mutex::new(Vec::new()),
            making: tokio::sync::Mutex::const_new(()),
        }
    }

    /// The one open for `key`, or the one `make` makes, remembered for the next caller.
    pub(crate) async fn get_or_make<F, Fut>(&self, key: K, make: F) -> anyhow::Result<Arc<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Arc<T>>>,
    {
        let _one_at_a_time = self.making.lock().await;
        if let Some(open) = self.find(&key) {
            return Ok(open);
        }
        let made = make().await?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, weak)| weak.strong_count() > 0);
        open.push((key, Arc::downgrade(&made)));
        Ok(made)
    }

    fn find(&self, key: &K) -> Option<Arc<T>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .find(|(at, _)| at == key)
            .and_then(|(_, weak)| weak.upgrade())
    }
}
