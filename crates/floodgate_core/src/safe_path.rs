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
    let mut path = root.to_path_buf();
    for raw in rel.split('/').filter(|segment| !segment.is_empty()) {
        let segment = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| Reject::NotFound)?;
        if !is_plain_segment(&segment) {
            return Err(Reject::NotFound);
        }
        path.push(segment.as_ref());
    }
    let canonical = std::fs::canonicalize(&path).map_err(|_| Reject::NotFound)?;
    if !canonical.starts_with(root) || !canonical.is_file() {
        return Err(Reject::NotFound);
    }
    Ok(canonical)
}

fn is_plain_segment(segment: &str) -> bool {
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
