//! Where configuration values come from.
//!
//! Parsing never touches `std::env` directly: it reads through [`Env`], so tests hand in a map
//! and never mutate the process environment (which is racy in a multi-threaded test binary).

use std::collections::{BTreeMap, HashMap};

/// A key → value lookup, the only thing configuration parsing needs from the outside world.
pub trait Env {
    /// The raw value of `key`, or `None` when it is not set.
    fn get(&self, key: &str) -> Option<String>;

    /// Every key that is set (for prefix pass-through such as `KAFKA_PROPERTY_*`).
    fn keys(&self) -> Vec<String>;
}

/// The process environment. A value that is not valid UTF-8 is passed on with U+FFFD in place
/// of the bad bytes, so it fails validation with a readable message instead of looking unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }
    fn keys(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl<K: AsRef<str> + Eq + std::hash::Hash, V: AsRef<str>> Env for HashMap<K, V> {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref().to_owned())
    }
    fn keys(&self) -> Vec<String> {
        self.keys().map(|k| k.as_ref().to_owned()).collect()
    }
}

impl<K: AsRef<str> + Ord, V: AsRef<str>> Env for BTreeMap<K, V> {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref().to_owned())
    }
    fn keys(&self) -> Vec<String> {
        self.keys().map(|k| k.as_ref().to_owned()).collect()
    }
}

/// A list of pairs; when a key repeats, the last one wins, as Kubernetes does with duplicate
/// `env` entries (Fission emits `TOPIC` twice when users also pass `--metadata topic=…`).
impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref().to_owned())
    }
    fn keys(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.as_ref().to_owned()).collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Env for [(K, V); N] {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }
    fn keys(&self) -> Vec<String> {
        Env::keys(self.as_slice())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }
    fn keys(&self) -> Vec<String> {
        Env::keys(self.as_slice())
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, key: &str) -> Option<String> {
        (**self).get(key)
    }
    fn keys(&self) -> Vec<String> {
        (**self).keys()
    }
}
