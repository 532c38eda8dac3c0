//! The README and `docs/` as a reader meets them: every relative link resolves (files and
//! `#anchors`), every page of `docs/` is reachable from the README, the README stays a short
//! guide, its table of spec keys lists exactly the keys the spec parser accepts, every
//! `neuromfa` command shown exists with the flags shown, and nothing cites a definition the
//! repository does not hold.

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

/// The `neuromfa …` command lines of `markdown`: lines of its code blocks, and code spans,
/// that run `neuromfa` (after any `VAR=value` assignments), with their continuation lines
/// (after a `\\`, or indented).
fn commands(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_fence = false;
    let mut continues = false;
    let mut block_start = 0;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continues = false;
            block_start = found.len();
            continue;
        }
        if in_fence {
            let text = line.trim_end_matches('\\').to_string();
            let in_block = found.len() > block_start;
            match found.last_mut() {
                Some(last) if in_block && (continues || line.starts_with(' ')) => {
                    *last = format!("{last} {text}")
                }
                _ => found.push(text),
            }
            continues = line.ends_with('\\');
        } else {
            found.extend(line.split('`').skip(1).step_by(2).map(String::from));
        }
    }
    found
        .into_iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "neuromfa")?;
            words[..start]
                .iter()
                .all(|w| w.contains('='))
                .then(|| words[start..].join(" "))
        })
        .collect()
}

/// `neuromfa ARGS --help`'s text, or why it failed.
fn help(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_neuromfa"))
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn every_command_the_docs_show_exists_with_its_flags() {
    let mut helps: HashMap<Vec<String>, Result<String, String>> = HashMap::new();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for command in commands(&read(&page)) {
            // `neuromfa sweep run …`: the subcommand is the words before the first option or
            // placeholder; after `--`, options are the workers' (`slurm submit … -- …`).
            let words: Vec<&str> = command.split_whitespace().skip(1).collect();
            let path: Vec<String> = words
                .iter()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .take_while(|w| !w.starts_with('-'))
                .map(|w| w.to_string())
                .collect();
            let (own, workers) = match words.iter().position(|w| *w == "--") {
                Some(at) => (&words[..at], &words[at + 1..]),
                None => (&words[..], &words[..0]),
            };
            for (path, flags) in [(path.clone(), own), (vec!["worker".to_string()], workers)] {
                let args: Vec<&str> = path.iter().map(String::as_str).collect();
                let text = helps.entry(path.clone()).or_insert_with(|| help(&args));
                let text = match text {
                    Ok(text) => text,
                    Err(why) => {
                        wrong.push(format!("{}: `{command}`: {why}", page.display()));
                        continue;
                    }
                };
                for flag in flags
                    .iter()
                    .filter(|w| w.trim_start_matches('[').starts_with("--"))
                {
                    let flag = flag
                        .trim_start_matches('[')
                        .split(['=', ']', '|'])
                        .next()
                        .unwrap_or_default();
                    checked += 1;
                    if !text.contains(&format!("{flag} ")) && !text.contains(&format!("{flag}\n")) {
                        wrong.push(format!(
                            "{}: `{command}`: `neuromfa {}` has no {flag}",
                            page.display(),
                            path.join(" ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} flags found: is the parser broken?"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
