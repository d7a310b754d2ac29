//! [`RelPath`]: the relative path of a file inside a shared directory, validated once so that
//! no path from the network can leave the directory it is joined onto, on any platform.

use std::{
    cmp::Ordering,
    fmt,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize, Serializer};

use crate::collection::CollectionError;

/// Longest accepted [`RelPath`], in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Most components one [`RelPath`] may have.
pub const MAX_PATH_COMPONENTS: usize = 64;

/// The relative path of a file inside a shared directory, `/`-separated, safe to join onto any
/// directory on any platform: [`RelPath::join_onto`] can never leave the base.
///
/// A `RelPath` is 1 to [`MAX_PATH_LEN`] bytes of 1 to [`MAX_PATH_COMPONENTS`] components. It has
/// no leading `/` (absolute), no trailing `/` and no empty component (`a//b`). No component is
/// `.` or `..`, contains `\`, `:` (a drive letter `C:` or an alternate stream `a:s`) or NUL, ends
/// with a dot or a space, or is a Windows device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`,
/// `LPT1`-`LPT9`, in any case, with or without an extension: `nul.txt`).
///
/// Paths order component by component, so a directory's files sort together, right after any
/// entry that has the directory's own path.
///
/// Serialized as a string and validated when deserialized, so decoded data never holds a bad
/// path.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RelPath(String);

impl RelPath {
    /// Validates `path`.
    ///
    /// # Errors
    /// [`CollectionError::InvalidPath`] naming the first rule the path breaks.
    pub fn new(path: impl Into<String>) -> Result<Self, CollectionError> {
        let path = path.into();
        match check_path(&path) {
            Ok(()) => Ok(RelPath(path)),
            Err(reason) => Err(CollectionError::InvalidPath { path, reason }),
        }
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last; each is a single safe file or directory name.
    pub fn components(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// `base` with every component pushed onto it: always a path inside `base`.
    pub fn join_onto(&self, base: &Path) -> PathBuf {
        let mut out = base.to_path_buf();
        for component in self.components() {
            out.push(component);
        }
        out
    }
}

/// The first rule `path` breaks, if any.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.ends_with('/') {
        return Err("trailing '/'");
    }
    if path.split('/').count() > MAX_PATH_COMPONENTS {
        return Err("more than 64 components");
    }
    path.split('/').try_for_each(check_component)
}

/// The first rule one component breaks, if any.
fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty component");
    }
    if c == "." {
        return Err("\".\" component");
    }
    if c == ".." {
        return Err("\"..\" component");
    }
    if c.contains('\0') {
        return Err("NUL byte");
    }
    // A hidden name is how a collection would plant `.bashrc` or `.ssh/authorized_keys`, and
    // the downloader's own temporary files start with a dot: no entry may.
    if c.starts_with('.') {
        return Err("hidden name (starts with '.')");
    }
    if c.chars().any(crate::is_unprintable) {
        return Err("control or invisible formatting character");
    }
    if c.contains('\\') {
        return Err("'\\' in a component");
    }
    if c.contains(':') {
        return Err("':' in a component (drive letter or stream)");
    }
    if c.ends_with(['.', ' ']) {
        return Err("component ends with a dot or a space");
    }
    if is_windows_device(c) {
        return Err("reserved device name on Windows");
    }
    Ok(())
}

/// Whether Windows maps `c` to a device: the part before the first dot, without trailing spaces,
/// is `CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9` or `LPT1`-`LPT9`, in any case.
fn is_windows_device(c: &str) -> bool {
    let stem = c.split('.').next().unwrap_or(c).trim_end_matches(' ');
    let stem = stem.to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        s => s
            .strip_prefix("COM")
            .or_else(|| s.strip_prefix("LPT"))
            .is_some_and(|digit| matches!(digit.as_bytes(), [b'1'..=b'9'])),
    }
}

impl TryFrom<&Path> for RelPath {
    type Error = CollectionError;

    /// Converts a relative filesystem path (for example a walked file with the shared directory's
    /// prefix stripped). Every component must be a plain UTF-8 name; `.` components in the middle
    /// and repeated separators are already normalized away by [`Path::components`].
    fn try_from(path: &Path) -> Result<Self, Self::Error> {
        let invalid = |reason| CollectionError::InvalidPath {
            path: path.to_string_lossy().into_owned(),
            reason,
        };
        let mut out = String::new();
        for component in path.components() {
            let name = match component {
                Component::Normal(name) => name.to_str().ok_or_else(|| invalid("not UTF-8"))?,
                Component::Prefix(_) => return Err(invalid("drive or UNC prefix")),
                Component::RootDir => return Err(invalid("absolute path")),
                Component::CurDir => return Err(invalid("\".\" component")),
                Component::ParentDir => return Err(invalid("\"..\" component")),
            };
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(name);
        }
        RelPath::new(out)
    }
}

impl TryFrom<String> for RelPath {
    type Error = CollectionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        RelPath::new(s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn reason(s: &str) -> &'static str {
        match RelPath::new(s) {
            Err(CollectionError::InvalidPath { path, reason }) => {
                assert_eq!(path, s);
                reason
            }
            other => panic!("{s:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn given_escaping_or_platform_special_paths_then_refused_with_reason() {
        assert_eq!(reason("../x"), "\"..\" component");
        assert_eq!(reason("a/../b"), "\"..\" component");
        assert_eq!(reason("/etc/passwd"), "absolute path");
        assert_eq!(reason("a//b"), "empty component");
        assert_eq!(reason("a/"), "trailing '/'");
        assert_eq!(reason("./a"), "\".\" component");
        assert_eq!(reason("a/."), "\".\" component");
        assert_eq!(reason("C:\\x"), "'\\' in a component");
        assert_eq!(reason("c:x"), "':' in a component (drive letter or stream)");
        assert_eq!(
            reason("a/file:stream"),
            "':' in a component (drive letter or stream)"
        );
        assert_eq!(reason("a\\b"), "'\\' in a component");
        assert_eq!(reason("x\0y"), "NUL byte");
        assert_eq!(reason(""), "empty path");
        assert_eq!(reason("/"), "absolute path");
        assert_eq!(reason("a."), "component ends with a dot or a space");
        assert_eq!(reason("a/b "), "component ends with a dot or a space");
        assert_eq!(reason(".bashrc"), "hidden name (starts with '.')");
        assert_eq!(
            reason(".ssh/authorized_keys"),
            "hidden name (starts with '.')"
        );
        assert_eq!(reason("a/.x.part"), "hidden name (starts with '.')");
        assert_eq!(
            reason("a/evil\u{1b}[31m"),
            "control or invisible formatting character"
        );
        assert_eq!(
            reason("gpj.\u{202e}exe"),
            "control or invisible formatting character"
        );
        for device in [
            "con",
            "CON",
            "Nul.txt",
            "a/aux",
            "prn.tar.gz",
            "COM1",
            "lpt9.log",
            "nul .txt",
        ] {
            assert_eq!(
                reason(device),
                "reserved device name on Windows",
                "{device}"
            );
        }
    }

    #[test]
    fn given_names_close_to_reserved_ones_then_accepted() {
        for ok in [
            "console",
            "com0",
            "com10",
            "lpt",
            "nul_x",
            "a.nul",
            "x..y",
            "report 2026.pdf",
            "ünï/cödé",
        ] {
            assert!(RelPath::new(ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn given_path_limits_then_enforced() {
        let deep_ok = ["d"; MAX_PATH_COMPONENTS].join("/");
        assert_eq!(path(&deep_ok).components().count(), 64);
        let deep = ["d"; MAX_PATH_COMPONENTS + 1].join("/");
        assert_eq!(reason(&deep), "more than 64 components");

        let long_ok = "x".repeat(MAX_PATH_LEN);
        assert!(RelPath::new(long_ok).is_ok());
        assert_eq!(
            reason(&"x".repeat(MAX_PATH_LEN + 1)),
            "longer than 4096 bytes"
        );
    }

    #[test]
    fn given_invalid_path_then_error_message_names_it() {
        let err = RelPath::new("../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "path \"../x\" is not allowed: \"..\" component"
        );
    }

    #[test]
    fn given_valid_paths_then_join_onto_never_leaves_base() {
        let base = Path::new("/srv/downloads/photos");
        for p in ["a", "a/b/c.txt", "x..y/y..z", "a b/c d"] {
            let rel = path(p);
            let joined = rel.join_onto(base);
            let inside = joined.strip_prefix(base).unwrap();
            assert!(
                inside
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{p:?} -> {joined:?}"
            );
            assert_eq!(inside.components().count(), rel.components().count());
        }
    }

    #[test]
    fn given_hostile_strings_then_no_relpath_exists_to_join() {
        for bad in [
            "..",
            "..x",
            ".hidden/.x",
            "../../etc",
            "a/../../b",
            "/abs",
            "C:",
            "c:\\windows",
            "\\\\server\\share",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} accepted");
            let cbor = cbor4ii::serde::to_vec(Vec::new(), &bad).unwrap();
            assert!(
                cbor4ii::serde::from_slice::<RelPath>(&cbor).is_err(),
                "{bad:?} decoded"
            );
        }
    }

    #[test]
    fn given_relative_filesystem_path_then_converted() {
        let rel = RelPath::try_from(Path::new("a/b/c.txt")).unwrap();
        assert_eq!(rel.as_str(), "a/b/c.txt");
        assert_eq!(
            RelPath::try_from(Path::new("a//b/./c")).unwrap().as_str(),
            "a/b/c"
        );
        for bad in ["../x", "a/../b", "/etc/passwd", "./a", "", "con"] {
            assert!(
                RelPath::try_from(Path::new(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn given_non_utf8_filesystem_path_then_refused() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
        let p = Path::new(OsStr::from_bytes(b"a/\xff.txt"));
        assert!(matches!(
            RelPath::try_from(p),
            Err(CollectionError::InvalidPath {
                reason: "not UTF-8",
                ..
            })
        ));
    }
}
