//! The README and `docs/` as a reader meets them: every relative link resolves (files and
//! `#anchors`), every page of `docs/` is reachable from the README, the README stays a short
//! guide, its table of spec keys lists exactly the keys the spec parser accepts, and nothing
//! cites a definition the repository does not hold.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use neuromfa_coordinator::SweepSpec;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `markdown` outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut in_fence = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                return false;
            }
            !in_fence
        })
        .collect()
}

/// `line` without its code spans (`` `…` ``), which can hold `](` that is no link.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The targets of the inline links `[text](target)` of `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(markdown) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// The anchors GitHub gives the headings of `markdown`: lower case, letters, digits, `-` and
/// `_` kept, spaces made `-`, everything else dropped; repeats numbered `-1`, `-2`, ….
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose_lines(markdown) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// Pages outside docs/ that link into it.
const LINKING_PAGES: [&str; 2] = ["tests/data/golden/README.md", "examples/demo/README.md"];

#[test]
fn every_link_of_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    let others = LINKING_PAGES.iter().map(|page| repo().join(page));
    for page in pages().into_iter().chain(others) {
        let text = read(&page);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = match file {
                "" => page.clone(),
                file => page.parent().unwrap().join(file),
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
                continue;
            }
            if !anchor.is_empty() {
                let is_page = file.extension().is_some_and(|e| e == "md");
                if !is_page || !anchors(&read(&file)).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the link parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = read(&repo().join("README.md"));
    let linked: BTreeSet<PathBuf> = link_targets(&readme)
        .iter()
        .map(|target| repo().join(target.split('#').next().unwrap_or_default()))
        .collect();
    for page in pages().into_iter().skip(1) {
        assert!(
            linked.contains(&page),
            "README.md links to no {}",
            page.display()
        );
    }
}

#[test]
fn the_readme_stays_a_short_guide() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= 220,
        "README.md has {lines} lines: move details to a docs/ page and link it"
    );
}

/// The keys in the README's table under `| key | default | meaning |`.
fn readme_keys() -> BTreeSet<String> {
    let readme = read(&repo().join("README.md"));
    let table = readme
        .split("| key | default | meaning |\n")
        .nth(1)
        .expect("the README has a table of spec keys");
    table
        .lines()
        .skip(1) // |---|---|---|
        .take_while(|line| line.starts_with('|'))
        .filter_map(|row| {
            let cell = row.split('|').nth(1)?.trim();
            Some(cell.trim_matches('`').to_string())
        })
        .collect()
}

#[test]
fn the_readme_table_lists_exactly_the_keys_the_spec_accepts() {
    let documented = readme_keys();
    let accepted: BTreeSet<String> = SweepSpec::keys()
        .unwrap()
        .iter()
        .map(|key| key.name.clone())
        .collect();
    let missing: Vec<&String> = accepted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys the spec accepts but the README's table does not list: {missing:?}"
    );
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "keys in the README's table that the spec refuses: {unknown:?}"
    );
}

#[test]
fn link_and_anchor_parsing_follow_markdown() {
    let text = "# `analyze`: one (Eq. 1)\n## Same\n## Same\n```\n[not](a-link)\n```\n\
                See [a](b.md#c) and `[code](span)`, then [d](#e).\n";
    assert_eq!(link_targets(text), ["b.md#c", "#e"]);
    let expected: BTreeSet<String> = ["analyze-one-eq-1", "same", "same-1"]
        .map(String::from)
        .into();
    assert_eq!(anchors(text), expected);
}

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
