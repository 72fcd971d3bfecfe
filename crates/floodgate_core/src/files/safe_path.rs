//! Maps the request path under a files mount onto a file inside its root, or refuses.
//!
//! Each segment is percent-decoded on its own, so `%2f` cannot make a new separator; any
//! segment that could climb or hide (`..`, `.`, dotfiles, `\`, `:`, NUL) is refused before the
//! filesystem is touched; finally the canonical path (symlinks followed) must still be inside
//! the canonical root. Every refusal is the same `NotFound`: a probe learns nothing.

use percent_encoding::percent_decode_str;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    NotFound,
}

/// `root` must be canonical; `rel` is the raw (percent-encoded) path after the mount prefix.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, Reject> {
    let path = segments(rel)?
        .iter()
        .fold(root.to_path_buf(), |path, segment| path.join(segment));
    let canonical = std::fs::canonicalize(&path).map_err(|_| Reject::NotFound)?;
    if !canonical.starts_with(root) || !canonical.is_file() {
        return Err(Reject::NotFound);
    }
    Ok(canonical)
}

/// Where an upload to `rel` may be written: a new or existing file whose folder exists inside
/// `root`. Same segment rules as `resolve`; the folder is canonicalized, the name is not (it may
/// not exist yet), so it cannot be a symlink trick either: an existing symlink at the name is
/// refused.
pub fn resolve_new(root: &Path, rel: &str) -> Result<PathBuf, Reject> {
    let mut segments = segments(rel)?;
    let name = segments.pop().ok_or(Reject::NotFound)?;
    let folder = segments
        .iter()
        .fold(root.to_path_buf(), |path, segment| path.join(segment));
    let folder = std::fs::canonicalize(folder).map_err(|_| Reject::NotFound)?;
    if !folder.starts_with(root) || !folder.is_dir() {
        return Err(Reject::NotFound);
    }
    let target = folder.join(name);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) if !meta.is_file() => Err(Reject::NotFound),
        _ => Ok(target),
    }
}

/// The decoded segments of `rel`, each decoded on its own and checked to be plain.
fn segments(rel: &str) -> Result<Vec<String>, Reject> {
    rel.split('/')
        .filter(|segment| !segment.is_empty())
        .map(|raw| {
            let segment = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| Reject::NotFound)?;
            if is_plain_segment(&segment) {
                Ok(segment.into_owned())
            } else {
                Err(Reject::NotFound)
            }
        })
        .collect()
}

pub(crate) fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && !segment.starts_with('.')
        && !segment.contains(['/', '\\', ':', '\0'])
        && !Path::new(segment).is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(root.join("docs/sub")).unwrap();
        fs::write(root.join("docs/a b.txt"), "a").unwrap();
        fs::write(root.join("docs/sub/c.txt"), "c").unwrap();
        fs::write(root.join(".env"), "secret").unwrap();
        (dir, root)
    }

    #[test]
    fn resolves_files_inside_root() {
        let (_dir, root) = root();
        assert_eq!(
            resolve(&root, "/docs/a%20b.txt"),
            Ok(root.join("docs/a b.txt"))
        );
        assert_eq!(
            resolve(&root, "/docs//sub/c.txt"),
            Ok(root.join("docs/sub/c.txt"))
        );
    }

    #[test]
    fn refuses_escapes_and_hidden_names() {
        let (_dir, root) = root();
        for rel in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2e/x",
            "/docs/..%2fa%20b.txt",
            "/docs%2fa%20b.txt",
            "/..\\etc",
            "/docs%5ca.txt",
            "/docs/a%00b.txt",
            "/.env",
            "/docs/./a%20b.txt",
            "/c:%5cwindows",
            "/docs",
            "/missing",
            "/%zz",
            "/%ff",
        ] {
            assert_eq!(resolve(&root, rel), Err(Reject::NotFound), "{rel}");
        }
    }

    #[test]
    fn upload_targets() {
        let (_dir, root) = root();
        assert_eq!(resolve_new(&root, "/new.bin"), Ok(root.join("new.bin")));
        assert_eq!(
            resolve_new(&root, "/docs/sub/c.txt"),
            Ok(root.join("docs/sub/c.txt"))
        );
        for rel in [
            "/",
            "/docs",
            "/missing/x.bin",
            "/../x",
            "/%2e%2e/x",
            "/.hidden",
            "/a%2fb",
        ] {
            assert_eq!(resolve_new(&root, rel), Err(Reject::NotFound), "{rel}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_must_stay_inside() {
        let (_dir, root) = root();
        std::os::unix::fs::symlink("/etc/hostname", root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("docs/sub/c.txt"), root.join("in")).unwrap();
        assert_eq!(resolve(&root, "/out"), Err(Reject::NotFound));
        assert_eq!(resolve(&root, "/in"), Ok(root.join("docs/sub/c.txt")));
    }
}
