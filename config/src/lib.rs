//! rota's configuration: the operator's TOML file, read, checked and turned
//! into the typed [`Config`] the rest of rota runs from.
//!
//! [`load`] (or [`parse`], for text already in memory) either returns the
//! configuration with any warnings, or a [`ConfigError`] listing every problem
//! found, each as a [`Diagnostic`] naming the file, line, column and setting:
//!
//! ```text
//! rota.toml:12:16: endpoint[0].idle_timeout: expected a duration like "4m", "15s" or "250ms", found "4 minutes" (remove the spaces)
//! ```
//!
//! # Layout
//!
//! - `model`: the validated configuration types and their defaults.
//! - `diagnostic`: [`Diagnostic`] and [`ConfigError`], and mapping byte offsets to lines and columns.
//! - `duration`: [`parse_duration`] and [`format_duration`].
//! - `raw`: the file as serde reads it, every value with its position.
//! - `locate`: recovering the dotted path of a setting from a position.
//! - `validate`: every rule, turning the raw file into a [`Config`].
//! - `tests` (test builds only): the public API against good and bad files.

use std::path::Path;

mod diagnostic;
mod duration;
mod locate;
pub mod model;
mod raw;
mod validate;

pub use diagnostic::{ConfigError, Diagnostic};
pub use duration::{format_duration, parse_duration};
pub use model::*;

use diagnostic::SourceMap;

/// A configuration that passed validation, with the warnings it drew.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// Settings that are allowed but probably unintended, in file order.
    pub warnings: Vec<Diagnostic>,
}

/// Reads, parses and validates the config file at `path`.
///
/// Relative paths inside the file (such as `ca_file`) are resolved against
/// the folder holding it. Diagnostics name the file as `path` displays.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file_name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|error| {
        Diagnostic::whole_file(&file_name, format!("cannot read the file: {error}"))
    })?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let base_dir = match std::env::current_dir() {
        Ok(current) => current.join(folder),
        Err(_) => folder,
    };
    parse_with_base(&source, &file_name, Some(&base_dir))
}

/// Parses and validates configuration text. `file_name` is only used in
/// diagnostics; relative paths inside the text resolve against the current
/// directory.
pub fn parse(source: &str, file_name: &str) -> Result<Loaded, ConfigError> {
    let current = std::env::current_dir().ok();
    parse_with_base(source, file_name, current.as_deref())
}

fn parse_with_base(
    source: &str,
    file_name: &str,
    base_dir: Option<&Path>,
) -> Result<Loaded, ConfigError> {
    let map = SourceMap::new(file_name, source);
    let raw = raw::decode(&map)?;
    validate::validate(&raw, map, base_dir).map_err(|diagnostics| ConfigError { diagnostics })
}

#[cfg(test)]
mod tests;
