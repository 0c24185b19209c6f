//! `OFFLOAD_<SECTION>_<KEY>` variables laid over the file's table, and the errors of the
//! result named after what the operator wrote: the key, and the variable it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;

use anyhow::{anyhow, bail};

use super::SECTIONS;

/// Tables inside a section that variables reach key by key: `OFFLOAD_SERVER_TLS_CERT` is
/// `server.tls.cert`.
const NESTED: &[(&str, &str)] = &[("server", "tls")];

/// Top-level keys that are not sections: `OFFLOAD_PRESET`, and `OFFLOAD_UPLOADS` (a TOML
/// array of inline tables, `[{ path = "/upload", mode = "mirror" }]`).
const TOP_LEVEL: &[&str] = &["preset", "uploads"];

/// The `OFFLOAD_*` variables of this process. Any other may hold anything, bytes that are not
/// UTF-8 too, and is none of offload's business.
pub(super) fn offload_vars(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut ours = BTreeMap::new();
    for (name, value) in vars {
        if !name.as_encoded_bytes().starts_with(b"OFFLOAD_") {
            continue;
        }
        let name = name
            .into_string()
            .map_err(|n| anyhow!("environment variable {n:?}: the name is not UTF-8"))?;
        let value = value
            .into_string()
            .map_err(|_| anyhow!("{name}: the value is not UTF-8"))?;
        ours.insert(name, value);
    }
    Ok(ours)
}

/// Which variable set a key, and its text where it was read as TOML into something other
/// than a string (`12345`, `true`), to be taken as the string it also is should the key
/// want one.
#[derive(Debug, Default, Clone)]
pub(super) struct EnvKeys(BTreeMap<String, SetBy>);

#[derive(Debug, Clone)]
struct SetBy {
    variable: String,
    text_if_not_string: Option<String>,
}

/// Lays `OFFLOAD_<SECTION>_<KEY>=value` over the table. Values parse as TOML when they can
/// (`true`, `8`, `["a", "b"]`), and are taken as strings otherwise.
pub(super) fn apply(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<EnvKeys> {
    let mut keys = EnvKeys::default();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("OFFLOAD_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        // `OFFLOAD_CONFIG` names the file itself, and `OFFLOAD_BACKUP_*` configure the other
        // side of `offload backup`/`restore` (see `ops::cli`): neither is a key of the file.
        if rest == "config" || rest.starts_with("backup_") {
            continue;
        }
        let Some(path) = key_path(&rest, name)? else {
            continue;
        };
        let parsed = parse_value(value);
        // A scalar read as TOML may have been meant as text (a bucket named 12345); a list
        // or a table was meant as one.
        let scalar = matches!(
            parsed,
            toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Datetime(_)
        );
        let text_if_not_string = scalar.then(|| value.clone());
        set(table, &path, parsed)?;
        keys.0.insert(
            path.join("."),
            SetBy {
                variable: name.clone(),
                text_if_not_string,
            },
        );
    }
    Ok(keys)
}

/// The key `rest` (a variable's name after `OFFLOAD_`, lowercased) sets, as a path of table
/// names. `None` for variables that belong to something else (scripts, tests); an error for
/// one that looks like a misspelt section, which would otherwise be ignored without a word.
fn key_path(rest: &str, variable: &str) -> anyhow::Result<Option<Vec<String>>> {
    if TOP_LEVEL.contains(&rest) {
        return Ok(Some(vec![rest.to_string()]));
    }
    // `OFFLOAD_UPLOADS_PATH`: the routes are one list, set whole.
    if let Some(top) = TOP_LEVEL
        .iter()
        .find(|top| rest.strip_prefix(**top).is_some_and(|a| a.starts_with('_')))
    {
        let example = match *top {
            "uploads" => "='[{ path = \"/upload\" }]'",
            _ => "=wordpress",
        };
        bail!(
            "{variable}: names no configuration key; `{top}` is set whole, as \
             OFFLOAD_{}{example}",
            top.to_ascii_uppercase()
        );
    }
    for section in SECTIONS {
        let Some(after) = rest.strip_prefix(section) else {
            continue;
        };
        if after.is_empty() {
            bail!(
                "{variable}: names the section [{section}]; set one key, OFFLOAD_{}_<KEY>",
                section.to_ascii_uppercase()
            );
        }
        if let Some(key) = after.strip_prefix('_') {
            return Ok(Some(nested_path(section, key)));
        }
    }
    // One letter off a section (added, dropped, changed or swapped) is a typo; anything
    // further is someone else's variable (OFFLOAD_LOGDIR, OFFLOAD_LOGIN_URL).
    let first = rest.split('_').next().unwrap_or(rest);
    let near = SECTIONS
        .iter()
        .chain(TOP_LEVEL)
        .find(|s| strsim::damerau_levenshtein(first, s) == 1);
    let Some(near) = near else {
        return Ok(None);
    };
    let hint = match TOP_LEVEL.contains(near) {
        true => format!("OFFLOAD_{}", near.to_ascii_uppercase()),
        false => format!("OFFLOAD_{}_<KEY>", near.to_ascii_uppercase()),
    };
    bail!("{variable}: names no configuration key (no section `{first}`); did you mean {hint}?")
}

/// `tls_cert` in `server` is `server.tls.cert`; any other key is the section's own.
fn nested_path(section: &str, key: &str) -> Vec<String> {
    for (in_section, table) in NESTED {
        if *in_section != section {
            continue;
        }
        if let Some(inner) = key
            .strip_prefix(table)
            .and_then(|k| k.strip_prefix('_'))
            .filter(|k| !k.is_empty())
        {
            return vec![section.into(), (*table).into(), inner.into()];
        }
    }
    vec![section.into(), key.into()]
}

fn parse_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// Sets `path` in `table`, making the tables on the way.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let Some((last, tables)) = path.split_last() else {
        return Ok(());
    };
    let mut at = table;
    for (depth, name) in tables.iter().enumerate() {
        let entry = at
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("{}: must be a table", path[..=depth].join(".")),
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

impl EnvKeys {
    /// When deserializing failed at `key` for want of another type, a variable's value that
    /// was read as TOML into a number, a boolean or a date: taken as a string instead
    /// (`OFFLOAD_STORE_BUCKET=12345` names bucket "12345"). `false` when there is nothing to
    /// retry, and the first error stands.
    pub(super) fn retry_as_string(
        &mut self,
        table: &mut toml::Table,
        key: &str,
        error: &toml::de::Error,
    ) -> bool {
        if !error.message().starts_with("invalid type") {
            return false;
        }
        let Some(text) = self
            .0
            .get_mut(key)
            .and_then(|set_by| set_by.text_if_not_string.take())
        else {
            return false;
        };
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        set(table, &path, toml::Value::String(text)).is_ok()
    }

    /// The variable that set `key` or a table or list it is in (`OFFLOAD_UPLOADS` sets
    /// `uploads[0].path`), else one that set a key in it when `key` is a table
    /// (`OFFLOAD_SERVER_TLS_LISTEN` made `server.tls`, which then lacks its `cert`), if one
    /// did.
    pub(super) fn variable(&self, key: &str) -> Option<&str> {
        let mut up = key;
        loop {
            if let Some(set_by) = self.0.get(up) {
                return Some(&set_by.variable);
            }
            match up.rfind(['.', '[']) {
                Some(end) => up = &up[..end],
                None => break,
            }
        }
        if key.is_empty() {
            return None;
        }
        self.0
            .iter()
            .find(|(set, _)| {
                set.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
            .map(|(_, set_by)| set_by.variable.as_str())
    }

    /// `error`, whose message begins with the key it is about (`server.max_headers: …`),
    /// naming the variable that set that key, if one did.
    pub(crate) fn name_variable(&self, error: anyhow::Error) -> anyhow::Error {
        let message = format!("{error:#}");
        let key = message.split_once(':').map_or("", |(key, _)| key);
        match self.variable(key) {
            Some(variable) => anyhow!("{message} (set by {variable})"),
            None => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&[u8], &[u8])]) -> Vec<(OsString, OsString)> {
        use std::os::unix::ffi::OsStringExt;
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    OsString::from_vec(k.to_vec()),
                    OsString::from_vec(v.to_vec()),
                )
            })
            .collect()
    }

    #[test]
    fn only_offload_variables_are_read_and_they_must_be_utf8() {
        let vars = os(&[
            (b"FOO", b"\xff"),
            (b"\xff", b"x"),
            (b"OFFLOAD_STORE_BUCKET", b"b"),
        ]);
        let env = offload_vars(vars.into_iter()).unwrap();
        assert_eq!(env.len(), 1);
        let err = offload_vars(os(&[(b"OFFLOAD_STORE_BUCKET", b"\xff")]).into_iter());
        assert_eq!(
            err.unwrap_err().to_string(),
            "OFFLOAD_STORE_BUCKET: the value is not UTF-8"
        );
        let err = offload_vars(os(&[(b"OFFLOAD_\xff", b"1")]).into_iter());
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("the name is not UTF-8")
        );
    }

    #[test]
    fn variables_name_their_keys() {
        let path = |rest: &str| key_path(rest, "V").unwrap();
        let owned = |p: &[&str]| Some(p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(path("server_listen"), owned(&["server", "listen"]));
        assert_eq!(path("server_tls_cert"), owned(&["server", "tls", "cert"]));
        assert_eq!(path("server_tls"), owned(&["server", "tls"]));
        assert_eq!(path("uploads"), owned(&["uploads"]));
        assert_eq!(path("preset"), owned(&["preset"]));
        // Scripts' and tests' own variables.
        for other in [
            "bin",
            "e2e_dir",
            "test_skip_moto",
            "wp_content_dir",
            "logdir",
            "login_url",
            "pgo",
            "port",
        ] {
            assert_eq!(path(other), None, "{other}");
        }
        for (misspelt, hint) in [
            ("servr_listen", "did you mean OFFLOAD_SERVER_"),
            ("logs_level", "did you mean OFFLOAD_LOG_"),
            ("sevrer_listen", "did you mean OFFLOAD_SERVER_"),
            ("upload_path", "did you mean OFFLOAD_UPLOADS?"),
            (
                "uploads_path",
                "`uploads` is set whole, as OFFLOAD_UPLOADS='[{ path",
            ),
            ("uploads_0_path", "`uploads` is set whole"),
            (
                "preset_name",
                "`preset` is set whole, as OFFLOAD_PRESET=wordpress",
            ),
            ("store", "names the section [store]"),
        ] {
            let err = key_path(misspelt, "OFFLOAD_X").unwrap_err().to_string();
            assert!(err.contains(hint), "{misspelt}: {err}");
        }
    }
}
