//! Globs in eggsfs paths, expanded by `eggs` (the shell cannot see eggsfs):
//! `*` any run of characters, `?` one character, `[abc]`, `[a-z]`, `[!a]`
//! one character of (or not of) a set; `\` quotes the next character. They
//! match within one path component; a leading `.` is matched like any other
//! character (eggsfs has no hidden files).

use client::Client;
use client::path::EggsPath;
use wire::{EggsTime, InodeType};

/// True if `text` has glob characters.
pub fn has_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Does `name` match `pattern` (whole)?
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

fn match_from(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, name index).
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        if let Some(&element) = pattern.get(p) {
            if element == '*' {
                resume = Some((p + 1, n));
                p += 1;
                continue;
            }
            if let Some(next) = single(pattern, p, name[n]) {
                p = next;
                n += 1;
                continue;
            }
        }
        match resume {
            Some((after_star, from)) => {
                p = after_star;
                n = from + 1;
                resume = Some((after_star, from + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// One pattern element at `p` against `c`: the index after it if it matches.
fn single(pattern: &[char], p: usize, c: char) -> Option<usize> {
    match pattern[p] {
        '?' => Some(p + 1),
        '[' => match class(pattern, p, c) {
            Some((matched, next)) => matched.then_some(next),
            None => (c == '[').then_some(p + 1),
        },
        '\\' => match pattern.get(p + 1) {
            Some(&quoted) => (quoted == c).then_some(p + 2),
            None => (c == '\\').then_some(p + 1),
        },
        literal => (literal == c).then_some(p + 1),
    }
}

/// A `[...]` class at `start` against `c`: (matched, index after `]`);
/// `None` if the class is not closed (then `[` is literal).
fn class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &current = pattern.get(i)?;
        if current == ']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|&end| end != ']') {
            let end = pattern[i + 2];
            matched |= current <= c && c <= end;
            i += 3;
        } else {
            matched |= current == c;
            i += 1;
        }
    }
}

/// Expands a path with globs into the sorted existing paths it matches;
/// a path without globs is returned as is (checked later by its command).
/// No match is an error, like a shell without `nullglob`.
pub async fn expand(client: &Client, text: &str) -> anyhow::Result<Vec<String>> {
    if !has_glob(text) {
        return Ok(vec![text.to_owned()]);
    }
    // Parse with the glob characters as they are: they are valid in names.
    let path = EggsPath::parse(text)?;
    let mut current: Vec<(String, wire::InodeId)> = vec![(String::new(), wire::InodeId::ROOT)];
    let components = path.components();
    for (index, component) in components.iter().enumerate() {
        let last = index + 1 == components.len();
        let mut next = Vec::new();
        for (prefix, dir) in &current {
            if dir.inode_type() != Some(InodeType::Directory) {
                continue;
            }
            if has_glob(component) {
                let mut entries = client.ls_dir(*dir, EggsTime::ZERO, 0).await?;
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                for entry in entries {
                    if matches(component, &entry.name) {
                        next.push((format!("{prefix}/{}", entry.name), entry.inode.without_owning()));
                    }
                }
            } else if let Some((inode, _)) =
                client.resolve(*dir, component, wire::shard::ResolveMode::Alive, EggsTime::ZERO).await?
            {
                next.push((format!("{prefix}/{component}"), inode.without_owning()));
            } else if last {
                continue;
            }
        }
        current = next;
    }
    if current.is_empty() {
        anyhow::bail!("no match: {text}");
    }
    Ok(current.into_iter().map(|(path, _)| path).collect())
}

/// Expands every argument.
pub async fn expand_all(client: &Client, texts: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for text in texts {
        out.extend(expand(client, text).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(matches("a*", "apple"));
        assert!(!matches("a*", "banana"));
        assert!(matches("*.txt", "notes.txt"));
        assert!(!matches("*.txt", "notes.txt.bak"));
        assert!(matches("f?le", "file"));
        assert!(!matches("f?le", "fle"));
        assert!(matches("[ab]*", "banana"));
        assert!(!matches("[!ab]*", "banana"));
        assert!(matches("x[0-9]", "x7"));
        assert!(!matches("x[0-9]", "xa"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "a"));
        assert!(matches("[", "["));
        assert!(matches("*a", "aaa"));
    }
}
