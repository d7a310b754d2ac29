//! A map of a few entries in one `Vec`: a file's names (at most eight) and the sizes its
//! holders announce (at most [`MAX_SIZES`] tracked). Every file has one of each, and a
//! `BTreeMap` or `HashMap` node for one or two entries costs several hundred bytes.

/// Most distinct announced sizes tracked per file; further ones get no vote (their holders
/// still hold the file). Bounds the work of finding the shown size.
pub(super) const MAX_SIZES: usize = 8;

#[derive(Debug, Clone)]
pub(super) struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: PartialEq, V> SmallMap<K, V> {
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[cfg(test)]
    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Inserts a key not present (callers check with `get_mut` first).
    pub(super) fn insert(&mut self, key: K, value: V) {
        self.0.push((key, value));
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    #[cfg(test)]
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}
