//! Multi-document YAML: split on `---` lines the way kubectl's YAML reader does, so each
//! document keeps its own text (passed through verbatim when it is not touched) and its own
//! index and line for error messages.

use crate::error::{DocumentRef, InjectError};

/// One document of the input.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    /// 1-based index among the non-empty documents.
    pub index: usize,
    /// 1-based line the document's text starts on.
    pub line: usize,
    /// The document's text, without the separator line.
    pub text: &'a str,
}

impl Document<'_> {
    /// The reference used in errors, without an object name yet.
    pub fn reference(&self) -> DocumentRef {
        DocumentRef {
            index: self.index,
            line: self.line,
            object: None,
        }
    }

    /// Parses the document into a generic value; `None` for a document holding only comments.
    /// A syntax error's line and column count from the start of the whole input.
    pub fn parse(&self) -> Result<Option<serde_json::Value>, InjectError> {
        let text = if self.line > 1 {
            // Blank lines in place of the documents before: the parser's positions are then
            // the input's own.
            std::borrow::Cow::Owned("\n".repeat(self.line - 1) + self.text)
        } else {
            std::borrow::Cow::Borrowed(self.text)
        };
        match serde_saphyr::from_str::<Option<serde_json::Value>>(&text) {
            Ok(v) => Ok(v.filter(|v| !v.is_null())),
            Err(e) => Err(InjectError::Yaml {
                doc: self.reference(),
                message: e.to_string(),
            }),
        }
    }
}

/// `true` for a document separator line: `---` at the start of the line, followed by nothing
/// but spaces or a comment (kubectl's rule; `--- {a: 1}` is content, not a separator).
fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    })
}

/// Splits `input` into its documents; blank ones (nothing but whitespace) are dropped.
pub fn split(input: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end_matches(['\n', '\r'])) {
            let text = &input[start..offset];
            if !text.trim().is_empty() {
                docs.push(Document {
                    index: docs.len() + 1,
                    line: start_line,
                    text,
                });
            }
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    let text = &input[start..];
    if !text.trim().is_empty() {
        docs.push(Document {
            index: docs.len() + 1,
            line: start_line,
            text,
        });
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_kubectl() {
        let input = "---\na: 1\n---\n\n--- # comment\nb: 2\n--- {c: 3}\n---\n";
        let docs = split(input);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "a: 1\n");
        assert_eq!((docs[0].index, docs[0].line), (1, 2));
        assert_eq!(docs[1].text, "b: 2\n--- {c: 3}\n");
        assert_eq!((docs[1].index, docs[1].line), (2, 6));
    }

    #[test]
    fn comment_only_document_parses_to_none() {
        let docs = split("# nothing here\n");
        assert_eq!(docs.len(), 1);
        assert!(matches!(docs[0].parse(), Ok(None)));
    }
}
