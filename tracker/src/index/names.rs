//! The name index: which files are shared under each name, and a trigram index over the names
//! so a search costs what it returns, not the size of the index.
//!
//! Each name gets a slot number; every distinct 3-byte window of its lower-case form maps to
//! the slots of the names holding it. A query of three bytes or more walks the postings of its
//! rarest trigram only, at most [`MAX_CANDIDATES`] of them, and checks each candidate for the
//! whole query. Shorter queries (and the empty one) look at the first [`MAX_CANDIDATES`] names
//! in name order. Either way the work per query is bounded whatever the index holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bitswarm_protocols::{FileId, FileName};

/// Most names one search looks at.
pub(super) const MAX_CANDIDATES: usize = 512;

#[derive(Debug)]
struct NameEntry {
    /// The name in lower case, for case-insensitive search.
    lower: String,
    /// Files that count this name; never empty.
    files: BTreeSet<FileId>,
    /// Its number in the trigram postings.
    slot: u32,
}

/// Names, the files under each, and the trigram postings.
#[derive(Debug, Default)]
pub(super) struct NameIndex {
    by_name: BTreeMap<FileName, NameEntry>,
    /// Slot -> name; `None` for a free slot.
    slots: Vec<Option<FileName>>,
    free: Vec<u32>,
    grams: HashMap<[u8; 3], HashSet<u32>>,
}

impl NameIndex {
    /// Files shared under exactly `name`.
    pub(super) fn files(&self, name: &FileName) -> Option<&BTreeSet<FileId>> {
        self.by_name.get(name).map(|e| &e.files)
    }

    /// Every indexed name, in order.
    #[cfg(test)]
    pub(super) fn names(&self) -> impl Iterator<Item = &FileName> {
        self.by_name.keys()
    }

    /// Indexes `id` under `name`.
    pub(super) fn add(&mut self, name: &FileName, id: FileId) {
        if let Some(entry) = self.by_name.get_mut(name) {
            entry.files.insert(id);
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = Some(name.clone());
                }
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(name.clone()));
                slot
            }
        };
        let lower = name.as_str().to_lowercase();
        for gram in trigrams(&lower) {
            self.grams.entry(gram).or_default().insert(slot);
        }
        self.by_name.insert(
            name.clone(),
            NameEntry {
                lower,
                files: BTreeSet::from([id]),
                slot,
            },
        );
    }

    /// Un-indexes `id` under `name`; the name goes when no file is left under it.
    pub(super) fn remove(&mut self, name: &FileName, id: FileId) {
        let Some(entry) = self.by_name.get_mut(name) else {
            return;
        };
        entry.files.remove(&id);
        if !entry.files.is_empty() {
            return;
        }
        let Some(entry) = self.by_name.remove(name) else {
            return;
        };
        for gram in trigrams(&entry.lower) {
            if let Some(postings) = self.grams.get_mut(&gram) {
                postings.remove(&entry.slot);
                if postings.is_empty() {
                    self.grams.remove(&gram);
                }
            }
        }
        if let Some(s) = self.slots.get_mut(entry.slot as usize) {
            *s = None;
            self.free.push(entry.slot);
        }
    }

    /// Names containing `needle` (already lower case), each with its files; at most
    /// [`MAX_CANDIDATES`] names are looked at.
    pub(super) fn matching(&self, needle: &str) -> Vec<(&FileName, &BTreeSet<FileId>)> {
        let grams = trigrams(needle);
        if grams.is_empty() {
            return self
                .by_name
                .iter()
                .take(MAX_CANDIDATES)
                .filter(|(_, e)| e.lower.contains(needle))
                .map(|(n, e)| (n, &e.files))
                .collect();
        }
        let mut rarest: Option<&HashSet<u32>> = None;
        for gram in &grams {
            let Some(postings) = self.grams.get(gram) else {
                return Vec::new();
            };
            if rarest.is_none_or(|r| postings.len() < r.len()) {
                rarest = Some(postings);
            }
        }
        rarest
            .into_iter()
            .flatten()
            .take(MAX_CANDIDATES)
            .filter_map(|slot| self.slots.get(*slot as usize)?.as_ref())
            .filter_map(|name| {
                let entry = self.by_name.get(name)?;
                entry.lower.contains(needle).then_some((name, &entry.files))
            })
            .collect()
    }
}

/// The distinct 3-byte windows of `s`.
fn trigrams(s: &str) -> Vec<[u8; 3]> {
    let mut grams: Vec<[u8; 3]> = s
        .as_bytes()
        .windows(3)
        .map(|w| [w[0], w[1], w[2]])
        .collect();
    grams.sort_unstable();
    grams.dedup();
    grams
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> FileName {
        FileName::new(s).unwrap()
    }

    #[test]
    fn a_search_finds_substrings_and_looks_only_at_the_rarest_trigrams_names() {
        let mut idx = NameIndex::default();
        let a = FileId::of(b"a");
        let b = FileId::of(b"b");
        idx.add(&n("Holiday.MKV"), a);
        idx.add(&n("notes.txt"), b);
        for i in 0..10_000u32 {
            idx.add(&n(&format!("noise-{i}.mkv")), FileId::of(&i.to_le_bytes()));
        }
        let hits: Vec<&FileName> = idx.matching("day.mk").into_iter().map(|(n, _)| n).collect();
        assert_eq!(hits, vec![&n("Holiday.MKV")]);
        // "day" is in one name: the walk is one posting long, not 10,002 names.
        assert_eq!(idx.grams[b"day"].len(), 1);
        assert!(idx.matching("zzz").is_empty());
        let short = idx.matching("no").len();
        assert!(short > 0 && short <= MAX_CANDIDATES, "{short}");
        // A query whose rarest trigram is common still looks at a bounded number of names.
        assert!(idx.matching(".mkv").len() <= MAX_CANDIDATES);
    }

    #[test]
    fn removed_names_leave_no_postings_and_their_slots_are_reused() {
        let mut idx = NameIndex::default();
        let a = FileId::of(b"a");
        let b = FileId::of(b"b");
        idx.add(&n("shared.bin"), a);
        idx.add(&n("shared.bin"), b);
        idx.remove(&n("shared.bin"), a);
        assert_eq!(idx.matching("shared").len(), 1, "b still holds the name");
        idx.remove(&n("shared.bin"), b);
        assert!(idx.matching("shared").is_empty());
        assert!(idx.grams.is_empty(), "no posting left behind");
        idx.add(&n("other.bin"), a);
        assert_eq!(idx.slots.len(), 1, "the freed slot was reused");
    }
}
