//! Mount table: longest-prefix match on whole path segments.
//!
//! `/stream` matches `/stream` and `/stream/x` but not `/streams`; the mounted app sees the
//! rest of the path (`/x`, or `/` for the prefix itself), like Starlette's `Mount`.

pub struct MountTable<T> {
    /// Sorted by prefix length, longest first, so the first match is the longest.
    entries: Vec<(String, T)>,
}

impl<T> Default for MountTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> MountTable<T> {
    /// Adds a mount. `prefix` is normalized (`/` or `/a/b` without trailing slash).
    /// A second mount on the same prefix replaces the first.
    pub fn insert(&mut self, prefix: String, value: T) {
        self.entries.retain(|(existing, _)| *existing != prefix);
        self.entries.push((prefix, value));
        self.entries
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    /// Every mounted value, longest prefix first.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, value)| value)
    }

    /// Finds the mount for `path`, returning it with the path relative to the mount.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&T, &'p str)> {
        self.entries
            .iter()
            .find_map(|(prefix, value)| strip_mount_prefix(prefix, path).map(|rest| (value, rest)))
    }
}

fn strip_mount_prefix<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    if prefix == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let mut table = MountTable::default();
        table.insert("/".to_string(), "root");
        table.insert("/stream".to_string(), "stream");
        table.insert("/stream/files".to_string(), "files");
        assert_eq!(
            table.find("/stream/files/a.txt"),
            Some((&"files", "/a.txt"))
        );
        assert_eq!(table.find("/stream/x"), Some((&"stream", "/x")));
        assert_eq!(table.find("/stream"), Some((&"stream", "/")));
        assert_eq!(table.find("/streams"), Some((&"root", "/streams")));
    }

    #[test]
    fn no_match_without_root() {
        let mut table = MountTable::default();
        table.insert("/api".to_string(), 1);
        assert_eq!(table.find("/apix"), None);
        assert_eq!(table.find("/other"), None);
    }
}
