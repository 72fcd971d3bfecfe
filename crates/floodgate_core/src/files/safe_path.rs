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

    #[cfg(unix)]
    mod proptests {
        //! `resolve` and `resolve_new` against a model of a real tree with symlinks inside and
        //! out, for paths built from hostile pieces and from arbitrary strings.

        use super::super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;
        use std::fs;
        use std::os::unix::fs::symlink;

        /// What a (decoded, `/`-joined) path inside the root is on disk.
        #[derive(Debug, Clone)]
        enum Node {
            Dir,
            File,
            /// A symlink to this path inside the root.
            Inside(&'static str),
            /// A symlink out of the root (or one that never resolves).
            Outside,
        }

        struct Tree {
            _base: tempfile::TempDir,
            root: PathBuf,
            outside: PathBuf,
            nodes: HashMap<&'static str, Node>,
        }

        fn tree() -> Tree {
            let base = tempfile::tempdir().unwrap();
            let canonical = fs::canonicalize(base.path()).unwrap();
            let root = canonical.join("root");
            let outside = canonical.join("outside");
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("secret.txt"), "secret").unwrap();
            let nodes: HashMap<&'static str, Node> = [
                ("docs", Node::Dir),
                ("docs/a.txt", Node::File),
                ("docs/sub", Node::Dir),
                ("docs/sub/c.txt", Node::File),
                ("docs/up", Node::Outside),
                ("docs/inlink", Node::Inside("docs/sub/c.txt")),
                ("dirlink", Node::Inside("docs")),
                ("ünï", Node::Dir),
                ("ünï/ß.txt", Node::File),
                ("a b.txt", Node::File),
                ("out", Node::Outside),
                ("outdir", Node::Outside),
                ("loop", Node::Outside),
                // Refused by name before the filesystem is asked, though they exist.
                (".env", Node::File),
                (".hidden", Node::Dir),
                (".hidden/x.txt", Node::File),
                ("a:b.txt", Node::File),
                ("back\\slash.txt", Node::File),
            ]
            .into_iter()
            .collect();
            fs::create_dir_all(root.join("docs/sub")).unwrap();
            fs::create_dir_all(root.join("ünï")).unwrap();
            fs::create_dir_all(root.join(".hidden")).unwrap();
            for (path, node) in &nodes {
                if let Node::File = node {
                    fs::write(root.join(path), *path).unwrap();
                }
            }
            symlink("../../outside", root.join("docs/up")).unwrap();
            symlink("sub/c.txt", root.join("docs/inlink")).unwrap();
            symlink("docs", root.join("dirlink")).unwrap();
            symlink(outside.join("secret.txt"), root.join("out")).unwrap();
            symlink(&outside, root.join("outdir")).unwrap();
            symlink("loop", root.join("loop")).unwrap();
            Tree {
                _base: base,
                root,
                outside,
                nodes,
            }
        }

        /// Percent-decoding written here, not taken from the engine: `%XX` with two hex
        /// digits is a byte, anything else is itself.
        fn decode(raw: &str) -> Option<String> {
            let bytes = raw.as_bytes();
            let mut out = Vec::new();
            let mut index = 0;
            while index < bytes.len() {
                let hex = |b: u8| (b as char).to_digit(16);
                match bytes[index..] {
                    [b'%', high, low, ..] if hex(high).is_some() && hex(low).is_some() => {
                        out.push((hex(high).unwrap() * 16 + hex(low).unwrap()) as u8);
                        index += 3;
                    }
                    _ => {
                        out.push(bytes[index]);
                        index += 1;
                    }
                }
            }
            String::from_utf8(out).ok()
        }

        /// The decoded segments, or `None` if any one of them must be refused.
        fn plain_segments(rel: &str) -> Option<Vec<String>> {
            rel.split('/')
                .filter(|raw| !raw.is_empty())
                .map(|raw| {
                    let segment = decode(raw)?;
                    let refused = segment.is_empty()
                        || segment.starts_with('.')
                        || segment.contains(['/', '\\', ':', '\0']);
                    (!refused).then_some(segment)
                })
                .collect()
        }

        /// Where walking `segments` from the root leads, following the symlinks inside it.
        fn walk(tree: &Tree, segments: &[String]) -> Option<(String, Node)> {
            let mut at = String::new();
            let mut node = Node::Dir;
            for segment in segments {
                if !matches!(node, Node::Dir) {
                    return None;
                }
                at = if at.is_empty() {
                    segment.clone()
                } else {
                    format!("{at}/{segment}")
                };
                node = tree.nodes.get(at.as_str())?.clone();
                while let Node::Inside(target) = node {
                    at = target.to_string();
                    node = tree.nodes[target].clone();
                }
            }
            Some((at, node))
        }

        /// What `resolve` should answer.
        fn expected(tree: &Tree, rel: &str) -> Option<PathBuf> {
            match walk(tree, &plain_segments(rel)?)? {
                (at, Node::File) => Some(tree.root.join(at)),
                _ => None,
            }
        }

        /// What `resolve_new` should answer: an existing folder inside the root, and a name that
        /// is a regular file or nothing yet.
        fn expected_new(tree: &Tree, rel: &str) -> Option<PathBuf> {
            let mut segments = plain_segments(rel)?;
            let name = segments.pop()?;
            let folder = match walk(tree, &segments)? {
                (at, Node::Dir) => at,
                _ => return None,
            };
            let at = if folder.is_empty() {
                name.clone()
            } else {
                format!("{folder}/{name}")
            };
            match tree.nodes.get(at.as_str()) {
                None | Some(Node::File) => Some(tree.root.join(folder).join(name)),
                Some(_) => None,
            }
        }

        fn segment() -> impl Strategy<Value = String> {
            let hostile = prop::sample::select(vec![
                "docs",
                "sub",
                "a.txt",
                "c.txt",
                "up",
                "inlink",
                "dirlink",
                "secret.txt",
                "ünï",
                "%C3%BCn%C3%AF",
                "ß.txt",
                "%c3%9F.txt",
                "a b.txt",
                "a%20b.txt",
                "out",
                "outdir",
                "loop",
                "new.bin",
                "..",
                ".",
                "%2e%2e",
                "%2E%2e",
                "%2e",
                ".%2e",
                "..%2f",
                "%2f",
                "docs%2fa.txt",
                "docs%2Fsub",
                "%5c",
                "..%5c",
                "\\",
                "..\\",
                "\\..",
                ".env",
                "%2eenv",
                ".hidden",
                "x.txt",
                "a:b.txt",
                "a%3Ab.txt",
                "back\\slash.txt",
                "back%5cslash.txt",
                "%00",
                "a%00.txt",
                "\0",
                "a\0",
                "c:",
                "C:%5c",
                "%ff",
                "%zz",
                "%",
                "%2",
                "~",
                "",
                "%2e%2e%2f%2e%2e",
                "docs%00",
            ]);
            prop_oneof![
                8 => hostile.prop_map(str::to_string),
                1 => "[./%\\\\:a-z0-9]{0,6}",
                1 => any::<String>().prop_map(|s| s.chars().take(8).collect()),
            ]
        }

        fn request_path() -> impl Strategy<Value = String> {
            (any::<bool>(), prop::collection::vec(segment(), 0..6)).prop_map(
                |(leading, segments)| {
                    let joined = segments.join("/");
                    if leading {
                        format!("/{joined}")
                    } else {
                        joined
                    }
                },
            )
        }

        #[test]
        fn resolve_follows_the_model_and_stays_inside() {
            let tree = tree();
            proptest!(ProptestConfig::with_cases(512), |(rel in request_path())| {
                let got = resolve(&tree.root, &rel);
                if let Ok(path) = &got {
                    prop_assert!(path.starts_with(&tree.root), "{:?} -> {:?}", rel, path);
                    prop_assert!(!path.starts_with(&tree.outside), "{:?} -> {:?}", rel, path);
                    prop_assert_eq!(&fs::canonicalize(path).unwrap(), path);
                    prop_assert!(path.is_file());
                }
                if plain_segments(&rel).is_none() {
                    prop_assert_eq!(&got, &Err(Reject::NotFound), "refused component in {:?}", rel);
                }
                prop_assert_eq!(got.ok(), expected(&tree, &rel), "{:?}", rel);
            });
        }

        #[test]
        fn resolve_new_follows_the_model_and_stays_inside() {
            let tree = tree();
            proptest!(ProptestConfig::with_cases(256), |(rel in request_path())| {
                let got = resolve_new(&tree.root, &rel);
                if let Ok(path) = &got {
                    let folder = path.parent().unwrap();
                    prop_assert!(folder.starts_with(&tree.root), "{:?} -> {:?}", rel, path);
                    prop_assert_eq!(&fs::canonicalize(folder).unwrap(), folder);
                    prop_assert!(folder.is_dir());
                    prop_assert!(fs::symlink_metadata(path).map_or(true, |meta| meta.is_file()));
                }
                if plain_segments(&rel).is_none() {
                    prop_assert_eq!(&got, &Err(Reject::NotFound), "refused component in {:?}", rel);
                }
                prop_assert_eq!(got.ok(), expected_new(&tree, &rel), "{:?}", rel);
            });
        }
    }
}
