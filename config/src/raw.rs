//! The file as serde reads it: loosely typed values that remember where they were written.
//!
//! Every setting is kept as a [`toml::Value`] wrapped in [`Spanned`], so a
//! value of the wrong type is not a serde failure but one more problem for
//! [`crate::validate`] to report (with all the others, not just the first).
//! What serde itself still rejects is the shape of the file: unknown keys
//! (`deny_unknown_fields`), a table where an array of tables belongs, and TOML
//! syntax. [`decode`] turns those failures into a [`Diagnostic`] with the
//! dotted path of the offending key where it can be recovered.
//!
//! Elements of arrays of tables are spanned so that a missing field can point
//! at their `[[header]]`. Plain sub-tables (`[admin]`, `[endpoint.probe]`,
//! `[endpoint.probe.tls]`) are not: TOML lets them exist implicitly or through
//! dotted keys, and such tables have no position of their own.

use std::ops::Range;

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::diagnostic::{closest, Diagnostic, SourceMap};
use crate::locate;

/// One setting as written, with its byte span in the source.
pub(crate) type Item = Spanned<Value>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub workers: Option<Item>,
    pub shutdown_grace: Option<Item>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub endpoint: Vec<Spanned<RawEndpoint>>,
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    pub role: Vec<Spanned<RawRole>>,
    pub fabric: Option<RawFabric>,
}

/// `[[role]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub name: Option<Item>,
    pub instances: Option<Item>,
    pub command: Option<Item>,
    pub update_domains: Option<Item>,
    pub fault_domains: Option<Item>,
    pub base_image: Option<Item>,
    pub health_path: Option<Item>,
}

/// `[fabric]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFabric {
    pub state_dir: Option<Item>,
    pub heartbeat_interval: Option<Item>,
    pub heartbeat_misses: Option<Item>,
    pub shutdown_grace: Option<Item>,
    pub ready_deadline: Option<Item>,
    pub drain_delay: Option<Item>,
    pub update_mode: Option<Item>,
    pub fault_domains: Option<Item>,
    pub hosts_per_fault_domain: Option<Item>,
    pub stop_instances_on_exit: Option<Item>,
    pub external: Option<Item>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<Item>,
}

/// `[[endpoint]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub name: Option<Item>,
    pub listen: Option<Item>,
    pub pool: Option<Item>,
    pub target_port: Option<Item>,
    pub distribution: Option<Item>,
    pub idle_timeout: Option<Item>,
    pub connect_timeout: Option<Item>,
    pub connect_attempts: Option<Item>,
    pub all_down: Option<Item>,
    pub backlog: Option<Item>,
    pub probe: Option<RawProbe>,
}

/// `[endpoint.probe]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    pub protocol: Option<Item>,
    pub port: Option<Item>,
    pub path: Option<Item>,
    pub interval: Option<Item>,
    pub timeout: Option<Item>,
    pub attempt_timeout: Option<Item>,
    pub rise: Option<Item>,
    pub fall: Option<Item>,
    pub tls: Option<RawTls>,
}

impl RawProbe {
    /// Where the probe table's first setting was written, if it has any.
    pub fn first_span(&self) -> Option<Range<usize>> {
        let own = [
            &self.protocol,
            &self.port,
            &self.path,
            &self.interval,
            &self.timeout,
            &self.attempt_timeout,
            &self.rise,
            &self.fall,
        ];
        let tls = self.tls.as_ref().and_then(RawTls::first_span);
        earliest(own.into_iter().flatten().map(Spanned::span).chain(tls))
    }
}

/// `[endpoint.probe.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub ca_file: Option<Item>,
    pub server_name: Option<Item>,
    pub insecure_skip_verify: Option<Item>,
}

impl RawTls {
    /// Where the TLS table's first setting was written, if it has any.
    pub fn first_span(&self) -> Option<Range<usize>> {
        let own = [&self.ca_file, &self.server_name, &self.insecure_skip_verify];
        earliest(own.into_iter().flatten().map(Spanned::span))
    }
}

/// `[[pool]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: Option<Item>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
}

/// `[[pool.backend]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub name: Option<Item>,
    pub address: Option<Item>,
    pub weight: Option<Item>,
    pub agent: Option<Item>,
}

fn earliest(spans: impl Iterator<Item = Range<usize>>) -> Option<Range<usize>> {
    spans.min_by_key(|span| span.start)
}

/// Reads the source into the raw model, or explains why it cannot be read.
pub(crate) fn decode(map: &SourceMap<'_>) -> Result<RawConfig, Diagnostic> {
    toml::from_str(map.source).map_err(|error| translate(map, &error))
}

/// Turns a toml/serde failure into a diagnostic: its position, the dotted path
/// of the key involved (when the rest of the file is valid TOML) and a message
/// reworded into this crate's "expected …, found …" style.
fn translate(map: &SourceMap<'_>, error: &toml::de::Error) -> Diagnostic {
    let span = error.span().unwrap_or(0..0);
    let field = locate::field_at(map.source, &span).unwrap_or_default();
    let message = reword(error.message(), &field);
    map.diagnostic(&span, field, message)
}

/// Rewords the messages serde and toml produce; anything unrecognised is kept,
/// only flattened to one line with backticks turned into double quotes.
fn reword(message: &str, field: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        if let Some(text) = unknown_field(rest) {
            return text;
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                expected_shape(expected, field),
                found_shape(found)
            );
        }
    }
    one_line(message)
}

/// `` `listne`, expected one of `name`, `listen`, … `` becomes
/// `unknown field "listne" (did you mean "listen"?), expected one of "name", "listen", …`.
fn unknown_field(rest: &str) -> Option<String> {
    // serde quotes every name in backticks: the first is the unknown key, the
    // others are the keys the table accepts.
    let mut quoted = rest.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    let known: Vec<&str> = quoted.collect();
    let mut text = format!("unknown field {unknown:?}");
    if let Some(suggestion) = closest(unknown, known.iter().copied()) {
        text.push_str(&format!(" (did you mean {suggestion:?}?)"));
    }
    match known.as_slice() {
        [] => text.push_str(", expected no fields here"),
        [only] => text.push_str(&format!(", expected {only:?}")),
        many => {
            let list: Vec<String> = many.iter().map(|name| format!("{name:?}")).collect();
            text.push_str(&format!(", expected one of {}", list.join(", ")));
        }
    }
    Some(text)
}

/// What serde says it wanted, in the words of a TOML file.
fn expected_shape(expected: &str, field: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        "a table".to_string()
    } else if expected == "a sequence" {
        // `pool[0].backend` is declared with `[[pool.backend]]`.
        let header: String = field
            .split('.')
            .map(|part| part.split('[').next().unwrap_or(part))
            .collect::<Vec<_>>()
            .join(".");
        if header.is_empty() {
            "an array of tables".to_string()
        } else {
            format!("an array of tables like [[{header}]]")
        }
    } else {
        one_line(expected)
    }
}

/// What serde says it found (`integer `5``, `map`, …), in the words of a TOML file.
fn found_shape(found: &str) -> String {
    let found = found.replace('`', "");
    match found.as_str() {
        "map" => "a table".to_string(),
        "sequence" => "an array".to_string(),
        _ => {
            for (serde_word, toml_word) in [
                ("integer ", "an integer "),
                ("string ", "a string "),
                ("boolean ", "a boolean "),
                ("floating point ", "a float "),
            ] {
                if let Some(value) = found.strip_prefix(serde_word) {
                    return format!("{toml_word}{value}");
                }
            }
            found
        }
    }
}

fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("; ").replace('`', "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewords_unknown_fields() {
        assert_eq!(
            reword("unknown field `listne`, expected `name` or `listen`", ""),
            r#"unknown field "listne" (did you mean "listen"?), expected one of "name", "listen""#
        );
        assert_eq!(
            reword("unknown field `zzz`, expected `name`", ""),
            r#"unknown field "zzz", expected "name""#
        );
        assert_eq!(
            reword("unknown field `zzz`, there are no fields", ""),
            r#"unknown field "zzz", expected no fields here"#
        );
    }

    #[test]
    fn rewords_type_errors() {
        assert_eq!(
            reword(
                "invalid type: integer `5`, expected struct RawProbe",
                "endpoint[0].probe"
            ),
            "expected a table, found an integer 5"
        );
        assert_eq!(
            reword("invalid type: map, expected a sequence", "pool[0].backend"),
            "expected an array of tables like [[pool.backend]], found a table"
        );
    }

    #[test]
    fn flattens_other_messages() {
        assert_eq!(
            reword("invalid string\nexpected `\"`, `'`\n", ""),
            r#"invalid string; expected """, "'""#
        );
    }
}
