//! Writing a credential into a netrc file, which is how stock Nix sends
//! credentials: curl reads the `netrc-file` Nix names, and Nix then sends
//! `Authorization: Basic` with the token as password on every request to
//! that host (docs/protocol.md; the server accepts a JWT as Basic password).
//!
//! netrc is a stream of whitespace-separated tokens: `machine HOST`
//! starts an entry, `login`, `password`, `account` take a value, `default`
//! starts the catch-all entry, and `macdef` starts a macro whose body runs
//! to a blank line. curl uses the first entry that matches, so an entry is
//! replaced where it stands, and a new one goes before any `default`.

/// One token and where it sits in the text.
struct Token<'a> {
    text: &'a str,
    start: usize,
    end: usize,
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push(Token {
                    text: &text[s..i],
                    start: s,
                    end: i,
                });
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(Token {
            text: &text[s..],
            start: s,
            end: text.len(),
        });
    }
    out
}

/// An entry: its host (`None` for `default`) and its byte span.
struct Entry<'a> {
    host: Option<&'a str>,
    start: usize,
    end: usize,
}

/// The entries before the first `macdef` (whose body is opaque text).
fn entries<'a>(toks: &[Token<'a>]) -> Vec<Entry<'a>> {
    let mut out: Vec<Entry<'a>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match toks[i].text {
            "macdef" => break,
            "machine" => {
                let host = toks.get(i + 1).map(|t| t.text);
                out.push(Entry {
                    host,
                    start: toks[i].start,
                    end: toks.get(i + 1).map_or(toks[i].end, |t| t.end),
                });
                i += 2;
                continue;
            }
            "default" => out.push(Entry {
                host: None,
                start: toks[i].start,
                end: toks[i].end,
            }),
            _ => {
                if let Some(last) = out.last_mut() {
                    last.end = toks[i].end;
                }
            }
        }
        i += 1;
    }
    out
}

/// The entry Larder writes.
pub fn entry(host: &str, password: &str) -> String {
    format!("machine {host} password {password}")
}

/// Returns `text` with `host`'s entry set to `password`, and whether
/// anything changed.
pub fn upsert(text: &str, host: &str, password: &str) -> (String, bool) {
    let new_entry = entry(host, password);
    let toks = tokens(text);
    let entries = entries(&toks);
    if let Some(e) = entries.iter().find(|e| e.host == Some(host)) {
        if text[e.start..e.end] == new_entry {
            return (text.to_owned(), false);
        }
        let out = format!("{}{new_entry}{}", &text[..e.start], &text[e.end..]);
        return (out, true);
    }
    if let Some(d) = entries.iter().find(|e| e.host.is_none()) {
        let out = format!("{}{new_entry}\n{}", &text[..d.start], &text[d.start..]);
        return (out, true);
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&new_entry);
    out.push('\n');
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_to_an_empty_file_once() {
        let (once, changed) = upsert("", "cache.example", "tok");
        assert!(changed);
        assert_eq!(once, "machine cache.example password tok\n");
        let (twice, changed) = upsert(&once, "cache.example", "tok");
        assert!(!changed);
        assert_eq!(twice, once);
    }

    #[test]
    fn replaces_the_entry_in_place_keeping_others() {
        let text = "machine a.example login u password p1\n\nmachine cache.example\n  login x\n  password old\nmachine b.example password p2\n";
        let (out, changed) = upsert(text, "cache.example", "new");
        assert!(changed);
        assert_eq!(
            out,
            "machine a.example login u password p1\n\nmachine cache.example password new\nmachine b.example password p2\n"
        );
    }

    #[test]
    fn new_entries_go_before_default() {
        let text = "machine a password p\ndefault login anon password x\n";
        let (out, _) = upsert(text, "cache.example", "tok");
        assert_eq!(
            out,
            "machine a password p\nmachine cache.example password tok\ndefault login anon password x\n"
        );
    }

    #[test]
    fn macdef_bodies_are_left_alone() {
        let text = "macdef init\nmachine cache.example password evil\n\n";
        let (out, changed) = upsert(text, "cache.example", "tok");
        assert!(changed);
        assert!(out.starts_with(text));
        assert!(out.ends_with("machine cache.example password tok\n"));
    }

    #[test]
    fn file_without_final_newline() {
        let (out, _) = upsert("machine a password p", "b", "t");
        assert_eq!(out, "machine a password p\nmachine b password t\n");
    }
}
