//! A value parsed from files that are replaced while the connector runs.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink (`..data`), and projected
//! service-account tokens and Vault agents rewrite their files in place; inotify sees neither
//! reliably through the symlinks, so the files are re-read on an interval (and at once when the
//! endpoint answers 401). A file that does not parse keeps the last good value: a half-written
//! rotation never takes credentials away.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Parses the files' contents (in the order of the paths) into the value.
pub(crate) type Parse<T> = fn(&[Vec<u8>]) -> Result<T, String>;

/// The current value of one or more files, kept fresh by [`Watched::spawn_reload`].
pub(crate) struct Watched<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    /// The variable the files came from, for warnings.
    var: &'static str,
    paths: Vec<PathBuf>,
    parse: Parse<T>,
    state: RwLock<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    /// The bytes `value` was parsed from: a re-read that finds them unchanged does nothing.
    raw: Vec<Vec<u8>>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("var", &self.inner.var)
            .field("paths", &self.inner.paths)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads and parses the files now; the error says what is wrong without their contents.
    pub(crate) fn load(
        var: &'static str,
        paths: Vec<PathBuf>,
        parse: Parse<T>,
    ) -> Result<Self, String> {
        let raw = read_all(&paths)?;
        let value = parse(&raw)?;
        Ok(Self {
            inner: Arc::new(Inner {
                var,
                paths,
                parse,
                state: RwLock::new(State {
                    value: Arc::new(value),
                    raw,
                }),
            }),
        })
    }

    /// The value as last read.
    pub(crate) fn get(&self) -> Arc<T> {
        self.inner.state.read().expect("lock").value.clone()
    }

    /// Reads the files again; `true` when the value changed.
    pub(crate) fn reload(&self) -> bool {
        self.inner.reload()
    }

    /// Re-reads the files every `every` on the current Tokio runtime (none: only
    /// [`Watched::reload`] refreshes), for as long as a clone of this value lives.
    pub(crate) fn spawn_reload(&self, every: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Inner<T>> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // File reads are small and rare; off the async workers all the same.
                let _ = tokio::task::spawn_blocking(move || inner.reload()).await;
            }
        });
    }
}

impl<T> Inner<T> {
    fn reload(&self) -> bool {
        let raw = match read_all(&self.paths) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(var = self.var, error = %e, "cannot re-read; keeping the last value");
                return false;
            }
        };
        if self.state.read().expect("lock").raw == raw {
            return false;
        }
        match (self.parse)(&raw) {
            Ok(value) => {
                *self.state.write().expect("lock") = State {
                    value: Arc::new(value),
                    raw,
                };
                tracing::info!(var = self.var, "re-read after it changed");
                true
            }
            Err(e) => {
                tracing::warn!(var = self.var, error = %e, "changed but not usable; keeping the last value");
                false
            }
        }
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("cannot read {p:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &[Vec<u8>]) -> Result<String, String> {
        let s = String::from_utf8(raw[0].clone()).map_err(|_| "not UTF-8".to_owned())?;
        if s.trim().is_empty() {
            return Err("empty".into());
        }
        Ok(s.trim().to_owned())
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_broken_one_keeps_the_last_value() {
        let dir = std::env::temp_dir().join(format!("watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let w = Watched::load("T", vec![path.clone()], text).unwrap();
        assert_eq!(*w.get(), "one");
        assert!(!w.reload(), "unchanged");
        std::fs::write(&path, "two").unwrap();
        assert!(w.reload());
        assert_eq!(*w.get(), "two");
        std::fs::write(&path, "  \n").unwrap();
        assert!(!w.reload(), "an empty file is refused");
        assert_eq!(*w.get(), "two");
        std::fs::remove_file(&path).unwrap();
        assert!(!w.reload(), "a missing file is refused");
        assert_eq!(*w.get(), "two");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
