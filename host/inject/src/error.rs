//! What can go wrong: every error names the document (1-based, and the line it starts on) and,
//! where there is one, the field or annotation.

use std::fmt;

/// Which document of a multi-document input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// 1-based index among the non-empty documents.
    pub index: usize,
    /// 1-based line of the input the document starts on.
    pub line: usize,
    /// `Kind name` when known.
    pub object: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {}", self.index, self.line)?;
        if let Some(o) = &self.object {
            write!(f, ", {o}")?;
        }
        f.write_str(")")
    }
}

/// An error of `weft inject`.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The document is not YAML.
    #[error("{doc}: not valid YAML: {message}")]
    Yaml {
        /// The document.
        doc: DocumentRef,
        /// The parser's message (its positions are the whole input's).
        message: String,
    },
    /// A field has the wrong type or value for the Kubernetes schema.
    #[error("{doc}: {path}: {message}")]
    Field {
        /// The document.
        doc: DocumentRef,
        /// The field (`spec.template.spec.containers[0].ports[0].containerPort`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A field that the Kubernetes schema does not have (a typo, or a newer API version).
    #[error("{doc}: {path}: unknown field")]
    UnknownField {
        /// The document.
        doc: DocumentRef,
        /// The field.
        path: String,
    },
    /// A `sidecar.weft.dev/…` (or Istio) annotation or label with a bad value.
    #[error("{doc}: annotation {name}: {message}")]
    Annotation {
        /// The document.
        doc: DocumentRef,
        /// The annotation (or label).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A flag of `weft inject` has a bad value.
    #[error("--{flag}: {message}")]
    Option {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Writing the result failed (a serializer bug rather than bad input).
    #[error("{doc}: cannot write the result: {message}")]
    Serialize {
        /// The document.
        doc: DocumentRef,
        /// The serializer's message.
        message: String,
    },
}
