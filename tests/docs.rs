//! The documentation as a reader meets it: nothing cites a definition the repository lacks.

use std::path::{Path, PathBuf};

/// Text files of the repository, outside `target/` and hidden folders.
fn text_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            text_files(&path, files);
        } else if path.extension().is_some_and(|e| {
            ["md", "rs", "toml", "sh", "py", "yaml", "proto"].contains(&e.to_str().unwrap_or(""))
        }) {
            files.push(path);
        }
    }
}

/// The method's definition ships in docs/method.md; nothing may send a reader to a
/// definition file or a golden folder that the repository does not hold.
#[test]
fn nothing_cites_a_definition_the_repository_lacks() {
    let needles = [
        ["SPEC", ".md"].concat(),
        ["SPEC", " §"].concat(),
        ["`../", "golden/"].concat(),
    ];
    let mut files = Vec::new();
    text_files(&repo(), &mut files);
    assert!(files.len() > 50, "only {} files found", files.len());
    let citing: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).ok()?;
            let found: Vec<&String> = needles
                .iter()
                .filter(|n| text.contains(n.as_str()))
                .collect();
            (!found.is_empty()).then(|| format!("{}: {found:?}", file.display()))
        })
        .collect();
    assert!(citing.is_empty(), "{}", citing.join("\n"));
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
