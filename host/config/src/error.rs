//! Configuration errors: each names the file, the line and column, and the field path.

use std::fmt;

use crate::locate::Location;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `listeners[0].virtual_hosts[0].routes[2].route.cluster`; empty for the
    /// document itself.
    pub path: String,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", Invalid { file, problems })]
    Invalid {
        /// The file (or a label such as `<embedded default>`).
        file: String,
        /// Every problem found, in file order where known.
        problems: Vec<Problem>,
    },
}

struct Invalid<'a> {
    file: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.problems {
            write!(f, "\n  {}", p.render(self.file))?;
        }
        Ok(())
    }
}

impl Problem {
    /// `file:line:column: path: message`.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::from(file);
        if let Some(loc) = self.location {
            out.push_str(&format!(":{}:{}", loc.line, loc.column));
        }
        out.push_str(": ");
        if !self.path.is_empty() {
            out.push_str(&self.path);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

impl ConfigError {
    /// The problems of an invalid configuration (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}
