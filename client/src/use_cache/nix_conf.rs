//! Editing a `nix.conf` in place, idempotently.
//!
//! Nix's format (`libutil/config.cc`, `applyConfig`): one `name = value`
//! per line, `#` starts a comment, values are whitespace-separated lists,
//! and an `extra-NAME` line appends to `NAME` (repeated `extra-` lines all
//! count). Edits here touch as little as possible: a value already present
//! is left alone, new values go on new `extra-…` lines at the end, and
//! every other line, comments included, is kept byte for byte.

/// A nix.conf as lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixConf {
    lines: Vec<String>,
}

/// `name` and the value words of a setting line; `None` for blank lines,
/// comments and includes.
fn setting(line: &str) -> Option<(&str, Vec<&str>)> {
    let content = line.split('#').next().unwrap_or_default();
    let (name, value) = content.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name, value.split_whitespace().collect()))
}

/// Substituter URLs compare without a trailing `/`.
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl NixConf {
    /// Splits `text` into lines.
    pub fn parse(text: &str) -> Self {
        Self {
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    /// The text, each line ending in `\n`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Every value of the settings called one of `names`.
    fn values<'a>(&'a self, names: &'a [&str]) -> impl Iterator<Item = &'a str> + 'a {
        self.lines
            .iter()
            .filter_map(|l| setting(l))
            .filter(|(n, _)| names.contains(n))
            .flat_map(|(_, values)| values)
    }

    /// The value of the last line setting `name` (Nix keeps the last).
    pub fn get(&self, name: &str) -> Option<String> {
        self.lines
            .iter()
            .filter_map(|l| setting(l))
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.join(" "))
    }

    /// Sets single-valued `name`: rewrites its last line when the value
    /// differs, appends a line when absent. Returns whether it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let last = self
            .lines
            .iter()
            .rposition(|l| setting(l).is_some_and(|(n, _)| n == name));
        match last {
            Some(i) if setting(&self.lines[i]).is_some_and(|(_, v)| v.join(" ") == value) => false,
            Some(i) => {
                self.lines[i] = format!("{name} = {value}");
                true
            }
            None => {
                self.lines.push(format!("{name} = {value}"));
                true
            }
        }
    }

    /// Adds `url` to `extra-substituters` unless `substituters` or
    /// `extra-substituters` already lists it. Returns whether it changed.
    pub fn add_substituter(&mut self, url: &str) -> bool {
        if self
            .values(&["substituters", "extra-substituters"])
            .any(|v| same_url(v, url))
        {
            return false;
        }
        self.lines.push(format!("extra-substituters = {url}"));
        true
    }

    /// Trusts every key of a cache (`larder use`): during a rotation's
    /// overlap the cache signs with each, and a host trusting all of them
    /// keeps working whichever retires first.
    pub fn add_trusted_keys(&mut self, keys: &[String]) -> bool {
        keys.iter()
            .fold(false, |changed, k| self.add_trusted_key(k) | changed)
    }

    /// Adds public key `key` (`name:base64`) to `extra-trusted-public-keys`
    /// unless already trusted. A different key of the same name in an
    /// `extra-trusted-public-keys` line is dropped first: it is this
    /// cache's old key (a re-created cache, or an import under an existing
    /// name), and Nix would otherwise keep checking with it. Rotated keys
    /// have new names (`<cache>-2`), so they add up instead.
    pub fn add_trusted_key(&mut self, key: &str) -> bool {
        const NAMES: [&str; 2] = ["trusted-public-keys", "extra-trusted-public-keys"];
        if self.values(&NAMES).any(|v| v == key) {
            return false;
        }
        if let Some((key_name, _)) = key.split_once(':') {
            let stale = |v: &str| v.split_once(':').is_some_and(|(n, _)| n == key_name);
            self.remove_values("extra-trusted-public-keys", stale);
        }
        self.lines
            .push(format!("extra-trusted-public-keys = {key}"));
        true
    }

    /// Drops values matching `stale` from `name` lines; a line left empty
    /// goes, a line with other values is rewritten (its comment kept).
    fn remove_values(&mut self, name: &str, stale: impl Fn(&str) -> bool) {
        let mut out = Vec::with_capacity(self.lines.len());
        for line in self.lines.drain(..) {
            let Some((n, values)) = setting(&line) else {
                out.push(line);
                continue;
            };
            if n != name || !values.iter().any(|v| stale(v)) {
                out.push(line);
                continue;
            }
            let kept: Vec<&str> = values.into_iter().filter(|v| !stale(v)).collect();
            if kept.is_empty() {
                continue;
            }
            let comment = line.find('#').map(|i| &line[i..]);
            let mut rewritten = format!("{name} = {}", kept.join(" "));
            if let Some(c) = comment {
                rewritten.push(' ');
                rewritten.push_str(c);
            }
            out.push(rewritten);
        }
        self.lines = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8080/demo";
    const KEY: &str = "demo:VKCwsSY7RkdBBlqiLyUp0HQ6uVEA0z0AhAOkZ+p8rHo=";

    #[test]
    fn adds_once_and_keeps_the_rest() {
        let original =
            "# my settings\nsubstituters = https://cache.nixos.org # main\nmax-jobs = 4\n";
        let mut conf = NixConf::parse(original);
        assert!(conf.add_substituter(URL));
        assert!(conf.add_trusted_key(KEY));
        let once = conf.render();
        assert!(once.starts_with(original), "{once}");
        assert!(once.ends_with(&format!(
            "extra-substituters = {URL}\nextra-trusted-public-keys = {KEY}\n"
        )));
        // A second run changes nothing.
        let mut again = NixConf::parse(&once);
        assert!(!again.add_substituter(URL));
        assert!(!again.add_substituter(&format!("{URL}/")));
        assert!(!again.add_trusted_key(KEY));
        assert_eq!(again.render(), once);
    }

    #[test]
    fn values_already_in_base_settings_count() {
        let mut conf = NixConf::parse(&format!(
            "substituters = https://cache.nixos.org {URL}/\ntrusted-public-keys = a:b {KEY}\n"
        ));
        assert!(!conf.add_substituter(URL));
        assert!(!conf.add_trusted_key(KEY));
    }

    #[test]
    fn commented_out_values_do_not_count() {
        let mut conf = NixConf::parse(&format!("# extra-substituters = {URL}\n"));
        assert!(conf.add_substituter(URL));
    }

    #[test]
    fn trusts_every_key_of_a_rotation() {
        let mut conf = NixConf::parse("extra-trusted-public-keys = demo:OLD\n");
        let keys = ["demo-2:NEW".to_owned(), "demo:OLD".to_owned()];
        assert!(conf.add_trusted_keys(&keys));
        assert_eq!(
            conf.render(),
            "extra-trusted-public-keys = demo:OLD\nextra-trusted-public-keys = demo-2:NEW\n"
        );
        assert!(
            !conf.add_trusted_keys(&keys),
            "a second run changes nothing"
        );
    }

    #[test]
    fn replaces_a_stale_key_of_the_same_name() {
        let mut conf = NixConf::parse(
            "extra-trusted-public-keys = other:AAAA demo:OLD # ours\nextra-trusted-public-keys = demo:OLDER\n",
        );
        assert!(conf.add_trusted_key(KEY));
        assert_eq!(
            conf.render(),
            format!(
                "extra-trusted-public-keys = other:AAAA # ours\nextra-trusted-public-keys = {KEY}\n"
            )
        );
    }

    #[test]
    fn set_and_get_single_values() {
        let mut conf = NixConf::parse("netrc-file = /a\nnetrc-file = /b # x\n");
        assert_eq!(conf.get("netrc-file").as_deref(), Some("/b"));
        assert!(!conf.set("netrc-file", "/b"));
        assert!(conf.set("netrc-file", "/c"));
        assert_eq!(conf.render(), "netrc-file = /a\nnetrc-file = /c\n");
        let mut empty = NixConf::parse("");
        assert_eq!(empty.get("netrc-file"), None);
        assert!(empty.set("netrc-file", "/n"));
        assert_eq!(empty.render(), "netrc-file = /n\n");
    }

    #[test]
    fn file_without_final_newline_gets_one() {
        let mut conf = NixConf::parse("sandbox = false");
        assert!(conf.add_substituter(URL));
        assert_eq!(
            conf.render(),
            format!("sandbox = false\nextra-substituters = {URL}\n")
        );
    }
}
