//! The link check of `cargo xtask lint`: every relative link in the project's Markdown
//! (README.md, CONTRIBUTING.md, deploy/README.md, docs/**/*.md) names a file or directory that
//! exists and, with an anchor into a Markdown file, one of that file's headings, by the slug
//! GitHub gives it. External links are checked for form only: the build machines have no
//! network. Links inside code (fenced blocks, code spans) are not links, as on GitHub.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, bail};
use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd};

/// The Markdown files checked, besides every `*.md` under docs/.
const FILES: &[&str] = &["README.md", "CONTRIBUTING.md", "deploy/README.md"];

/// Pages another change generates (from the CLI's clap definitions): a link to one passes while
/// it is absent, and is checked like any other once it exists.
/// Checks every link of the project's Markdown under `root`; prints one line per broken link
/// and fails when there is any.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let mut files: Vec<String> = FILES.iter().map(|f| (*f).to_owned()).collect();
    markdown_under(root, Path::new("docs"), &mut files)?;
    let mut slugs: HashMap<String, Target> = HashMap::new();
    let mut broken = Vec::new();
    let mut links = 0;
    for file in &files {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        links += self::links(&text).len();
        broken.extend(problems(file, &text, &mut |target: &str| {
            slugs
                .entry(target.to_owned())
                .or_insert_with(|| resolve(root, target))
                .clone()
        }));
    }
    for line in &broken {
        eprintln!("{line}");
    }
    if !broken.is_empty() {
        bail!(
            "{} broken link(s) in the project's Markdown (above)",
            broken.len()
        );
    }
    eprintln!(
        "+ links: {links} in {} Markdown files, none broken",
        files.len()
    );
    Ok(())
}

/// Every `*.md` under `dir` (relative to `root`), sorted, as paths relative to `root`.
fn markdown_under(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    let full = root.join(dir);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&full)
        .with_context(|| format!("reading {}", full.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let rel = dir.join(name);
        if path.is_dir() {
            markdown_under(root, &rel, out)?;
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// What a link's path names.
#[derive(Clone, Debug)]
enum Target {
    Missing,
    Directory,
    /// A file: the slugs of its headings when it is Markdown.
    File(Option<Vec<String>>),
}

fn resolve(root: &Path, target: &str) -> Target {
    let path = root.join(target);
    if path.is_dir() {
        return Target::Directory;
    }
    if !path.is_file() {
        return Target::Missing;
    }
    if path.extension().is_some_and(|e| e == "md") {
        match std::fs::read_to_string(&path) {
            Ok(text) => Target::File(Some(headings(&text))),
            Err(_) => Target::Missing,
        }
    } else {
        Target::File(None)
    }
}

/// A link as written, and the line it starts on.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    dest: String,
}

/// Every link and image of a Markdown text (none from code: the parser yields none there).
fn links(text: &str) -> Vec<Link> {
    Parser::new_ext(text, Options::ENABLE_TABLES)
        .into_offset_iter()
        .filter_map(|(event, range)| match event {
            Event::Start(
                Tag::Link {
                    link_type,
                    dest_url,
                    ..
                }
                | Tag::Image {
                    link_type,
                    dest_url,
                    ..
                },
            ) => Some(Link {
                line: line_of(text, range.start),
                // An e-mail autolink (`<a@b.c>`) comes without its scheme.
                dest: if link_type == LinkType::Email && !dest_url.starts_with("mailto:") {
                    format!("mailto:{dest_url}")
                } else {
                    dest_url.into_string()
                },
            }),
            _ => None,
        })
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// The anchors of a Markdown text's headings, as GitHub makes them: the slug, and for a
/// repeated slug the slug with `-1`, `-2`, ... appended.
fn headings(text: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base = slug(&h);
                    let n = seen.entry(base.clone()).or_insert(0);
                    anchors.push(if *n == 0 { base } else { format!("{base}-{n}") });
                    *n += 1;
                }
            }
            _ => {}
        }
    }
    anchors
}

/// GitHub's anchor for a heading's text: lower case, every space a '-', and every character
/// that is not a letter, a digit, '-' or '_' left out.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The broken links of `file` (relative to the root), one line each. `target` tells what a
/// root-relative path names.
fn problems(file: &str, text: &str, target: &mut dyn FnMut(&str) -> Target) -> Vec<String> {
    let mut out = Vec::new();
    for link in links(text) {
        let Link { line, dest } = &link;
        if let Some(why) = problem(file, dest, target) {
            out.push(format!("{file}:{line}: broken link ({dest}): {why}"));
        }
    }
    out
}

fn problem(file: &str, dest: &str, target: &mut dyn FnMut(&str) -> Target) -> Option<String> {
    if let Some(rest) = dest
        .strip_prefix("https://")
        .or_else(|| dest.strip_prefix("http://"))
    {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || "-.:[]@".contains(c);
        return (host.is_empty() || !host.chars().all(valid) || dest.contains(char::is_whitespace))
            .then(|| "not a valid http(s) URL".to_owned());
    }
    if let Some(address) = dest.strip_prefix("mailto:") {
        return (!address.contains('@')).then(|| "not an e-mail address".to_owned());
    }
    if let Some((scheme, _)) = dest.split_once(':')
        && !scheme.is_empty()
        && !scheme.contains(['/', '#', '?', '.'])
    {
        return Some(format!(
            "a {scheme}: link (only http, https and mailto are allowed)"
        ));
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (dest, None),
    };
    let path = path.split('?').next().unwrap_or_default();
    let rel = if path.is_empty() {
        file.to_owned()
    } else {
        match relative_to_root(file, &percent_decoded(path)) {
            Some(rel) => rel,
            None => return Some("leads out of the repository".to_owned()),
        }
    };
    match (target(&rel), anchor) {
        (Target::Missing, _) => Some(format!("no such file: {rel}")),
        (_, None | Some("")) => None,
        (Target::File(Some(anchors)), Some(anchor)) => (!anchors.iter().any(|a| a == anchor))
            .then(|| format!("no heading of {rel} has the anchor #{anchor}")),
        (Target::File(None) | Target::Directory, Some(_)) => {
            Some(format!("an anchor into {rel}, which is not Markdown"))
        }
    }
}

/// `dest`, written in `file`, as a path relative to the root (`/...` is from the root, as on
/// GitHub); `None` when it leads out of the root.
fn relative_to_root(file: &str, dest: &str) -> Option<String> {
    let mut parts: Vec<String> = if dest.starts_with('/') {
        Vec::new()
    } else {
        Path::new(file)
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for c in Path::new(dest).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

/// `%20` and the like decoded; anything that is not a valid escape is kept as written.
fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(
            slug("Kernels and triage-agent doctor"),
            "kernels-and-triage-agent-doctor"
        );
        assert_eq!(
            slug("Security: what reaches the agent, and its bounds"),
            "security-what-reaches-the-agent-and-its-bounds"
        );
        assert_eq!(
            slug("The container runtime (CRI)"),
            "the-container-runtime-cri"
        );
        assert_eq!(slug("gRPC (agent.v1)"), "grpc-agentv1");
        assert_eq!(
            slug("dns_lookups and pod_losses"),
            "dns_lookups-and-pod_losses"
        );
        assert_eq!(
            slug("Quick start on a laptop: the two commands"),
            "quick-start-on-a-laptop-the-two-commands"
        );
        assert_eq!(slug("Über 5 -- x"), "über-5----x");
    }

    #[test]
    fn headings_take_code_spans_and_number_repeats() {
        let text = "# Kernels and `triage-agent doctor`\n\n## Notes\n\n```\n# not a heading\n```\n\n### Notes\n\nSetext\n------\n";
        assert_eq!(
            headings(text),
            [
                "kernels-and-triage-agent-doctor",
                "notes",
                "notes-1",
                "setext"
            ]
        );
    }

    #[test]
    fn links_come_with_their_line_and_never_from_code() {
        let text = "# T\n\nSee [a](docs/a.md) and [b](b.md#x).\n\n```\n[not](code.md)\n```\n\n\
                    `[not](span.md)` <https://example.com> <a@b.c>\n\n| c |\n| --- |\n| [t](t.md) |\n\n![i](img.png)\n";
        let found: Vec<(usize, String)> =
            links(text).into_iter().map(|l| (l.line, l.dest)).collect();
        assert_eq!(
            found,
            [
                (3, "docs/a.md".to_owned()),
                (3, "b.md#x".to_owned()),
                (9, "https://example.com".to_owned()),
                (9, "mailto:a@b.c".to_owned()),
                (13, "t.md".to_owned()),
                (15, "img.png".to_owned()),
            ]
        );
    }

    fn tree(target: &str) -> Target {
        match target {
            "README.md" => Target::File(Some(vec!["intro".into(), "requirements".into()])),
            "docs/a.md" => Target::File(Some(vec!["a-title".into()])),
            "docs/kernel-matrix.json" => Target::File(None),
            "deploy" | "docs" => Target::Directory,
            _ => Target::Missing,
        }
    }

    #[test]
    fn broken_links_are_named_one_per_line() {
        let text = "[ok](a.md) [ok](a.md#a-title) [ok](../README.md#requirements) [ok](#a-title)\n\
                    [ok](../deploy/) [ok](kernel-matrix.json) [ok](https://github.com/x/y#z)\n\
                    [ok](/README.md) [ok](a%2Emd) [ok](mailto:a@b.c)\n\
                    [bad](b.md) [bad](a.md#nope) [bad](kernel-matrix.json#x) [bad](../../x.md)\n\
                    [bad](https://) [bad](ftp://host/x) [bad](#nope)\n";
        let lines = problems("docs/a.md", text, &mut tree);
        assert_eq!(
            lines,
            [
                "docs/a.md:4: broken link (b.md): no such file: docs/b.md",
                "docs/a.md:4: broken link (a.md#nope): no heading of docs/a.md has the anchor #nope",
                "docs/a.md:4: broken link (kernel-matrix.json#x): an anchor into docs/kernel-matrix.json, which is not Markdown",
                "docs/a.md:4: broken link (../../x.md): leads out of the repository",
                "docs/a.md:5: broken link (https://): not a valid http(s) URL",
                "docs/a.md:5: broken link (ftp://host/x): a ftp: link (only http, https and mailto are allowed)",
                "docs/a.md:5: broken link (#nope): no heading of docs/a.md has the anchor #nope",
            ]
        );
    }

    #[test]
    fn the_project_markdown_has_no_broken_links() {
        check(&crate::root()).expect("every link of the project's Markdown resolves");
    }
}
