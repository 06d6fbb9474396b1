//! Diagnostics: one problem in a config file, located by line, column and field.

use std::fmt;
use std::ops::Range;

/// One problem (or warning) found in a config file.
///
/// `line` and `column` are 1-based and point at the offending value (or key,
/// for an unknown field). Column counts characters, not bytes. Both are 0 when
/// the problem concerns the whole file, for example when it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`crate::load`] or [`crate::parse`].
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the setting, with array indexes:
    /// `endpoint[1].probe.interval`, `pool[0].backend[2].address`.
    /// Empty when the problem is not tied to a setting (a TOML syntax error).
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about the whole file rather than one place in it.
    pub fn whole_file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A config file that could not be used: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_per_line(.diagnostics))]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl From<Diagnostic> for ConfigError {
    fn from(diagnostic: Diagnostic) -> Self {
        ConfigError {
            diagnostics: vec![diagnostic],
        }
    }
}

fn one_per_line(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Maps byte offsets of one source text to 1-based lines and columns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceMap<'a> {
    pub file: &'a str,
    pub source: &'a str,
}

impl<'a> SourceMap<'a> {
    pub fn new(file: &'a str, source: &'a str) -> Self {
        SourceMap { file, source }
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    /// Offsets past the end, or inside a character, are pulled back.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.source[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic pointing at the start of `span`.
    pub fn diagnostic(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.line_column(span.start);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The candidate closest in spelling to `word`, if it is close enough to be a
/// plausible typo: one edit for words of three to five letters, two for
/// longer ones, none for shorter ones (everything is close to "a").
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = match word.chars().count() {
        0..=2 => return None,
        3..=5 => 1,
        _ => 2,
    };
    candidates
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, counting a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let located = Diagnostic {
            file: "examples/bad.toml".into(),
            line: 12,
            column: 11,
            field: "endpoint[0].idle_timeout".into(),
            message: "expected a duration".into(),
        };
        assert_eq!(
            located.to_string(),
            "examples/bad.toml:12:11: endpoint[0].idle_timeout: expected a duration"
        );
        let whole = Diagnostic::whole_file("rota.toml", "cannot read the file");
        assert_eq!(whole.to_string(), "rota.toml: cannot read the file");

        let error = ConfigError {
            diagnostics: vec![located, whole],
        };
        assert_eq!(error.to_string().lines().count(), 2);
    }

    #[test]
    fn line_and_column_are_one_based_characters() {
        let map = SourceMap::new("f", "ab\n\u{e9}cd\n");
        assert_eq!(map.line_column(0), (1, 1));
        assert_eq!(map.line_column(1), (1, 2));
        assert_eq!(map.line_column(3), (2, 1));
        // 'é' is two bytes; 'c' is the second character of line 2.
        assert_eq!(map.line_column(5), (2, 2));
        // Inside 'é', and far past the end: both pulled back, no panic.
        assert_eq!(map.line_column(4), (2, 1));
        assert_eq!(map.line_column(999), (3, 1));
    }

    #[test]
    fn suggests_close_spellings_only() {
        let fields = ["name", "listen", "pool"];
        assert_eq!(closest("listne", fields.into_iter()), Some("listen"));
        assert_eq!(closest("nmae", fields.into_iter()), Some("name"));
        assert_eq!(closest("pol", fields.into_iter()), Some("pool"));
        assert_eq!(closest("weight", fields.into_iter()), None);
        assert_eq!(closest("x", fields.into_iter()), None);
        assert_eq!(closest("a", ["b"].into_iter()), None);
    }
}
