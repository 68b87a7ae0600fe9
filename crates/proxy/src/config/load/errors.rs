//! How a config error says where it is: [`ConfigError`], and the locator that turns byte
//! offsets into `FILE:LINE:COL: key`.

use std::ops::Range;

use thiserror::Error;

/// Why a config could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A value or structure in the file is wrong; points at the place.
    #[error("{origin}:{line}:{column}: {key}{message}", key = key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// File path or `embedded defaults`.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The dotted key, when known.
        key: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A command-line override does not fit the config.
    #[error("{flag}: {message}")]
    Override {
        /// The flag, e.g. `--upstream`.
        flag: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// Maps byte offsets in the source to `line:col` and finds the key an offset belongs to.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Locator<'_> {
    pub(super) fn error(&self, span: Range<usize>, key: Option<String>, message: String) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid { origin: self.origin.to_string(), line, column, key, message }
    }

    /// An error about a key that has no span of its own (a whole-table check): points at the
    /// key's line when it is written in the file, else at the top.
    pub(super) fn unplaced(&self, key: &str, message: String) -> ConfigError {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let offset = self
            .text
            .match_indices(leaf)
            .map(|(i, _)| i)
            .find(|i| self.key_at(*i).as_deref() == Some(key))
            .unwrap_or(0);
        self.error(offset..offset, Some(key.to_string()), message)
    }

    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// `table.key` for the `key = value` line around `offset`, using the nearest `[table]`
    /// header above it; `None` when the offset is not on such a line.
    pub(super) fn key_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
            return None;
        }
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        Some(match table {
            Some(table) if !table.is_empty() => format!("{table}.{key}"),
            _ => key.to_string(),
        })
    }
}
