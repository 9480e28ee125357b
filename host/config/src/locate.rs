//! Maps a field path (`listeners[0].virtual_hosts[1].domains`) to its line and column in the
//! YAML text, so that errors found after parsing still point into the file.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser, Span, SpannedEventReceiver};

/// A 1-based line and column in the configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Field paths of one YAML document and where each starts.
#[derive(Debug, Default)]
pub struct SourceMap {
    spans: HashMap<String, Location>,
}

impl SourceMap {
    /// Indexes `text` with the YAML parser serde-saphyr uses; a text it rejects gives an empty map
    /// (deserialization reports that error with its own location).
    pub fn index(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return SourceMap::default();
        }
        SourceMap {
            spans: builder.spans,
        }
    }

    /// The location of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(loc) = self.spans.get(path) {
                return Some(*loc);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { key: Option<String> },
    Sequence { next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<(String, Frame)>,
    spans: HashMap<String, Location>,
}

impl Builder {
    fn record(&mut self, path: String, mark: Marker) {
        self.spans.entry(path).or_insert(Location {
            line: mark.line(),
            column: mark.col() + 1,
        });
    }

    /// A node starts here: returns its path, or None when it is a mapping key.
    fn node_start(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let Some((parent, frame)) = self.stack.last_mut() else {
            return Some(String::new());
        };
        match frame {
            Frame::Mapping { key } => match key.take() {
                None => {
                    let name = scalar.unwrap_or("?").to_owned();
                    let path = join(parent, &name);
                    let parent = parent.clone();
                    *key = Some(name);
                    self.record(path, mark);
                    // A mapping is located at its first key.
                    self.record(parent, mark);
                    None
                }
                Some(name) => Some(join(parent, &name)),
            },
            Frame::Sequence { next } => {
                let path = format!("{parent}[{next}]");
                *next += 1;
                Some(path)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let mark = span.start;
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.node_start(mark, Some(&value)) {
                    self.record(path, mark);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.node_start(mark, None) {
                    self.record(path, mark);
                }
            }
            Event::MappingStart(..) => {
                let path = self.node_start(mark, None).unwrap_or_default();
                self.stack.push((path, Frame::Mapping { key: None }));
            }
            Event::SequenceStart(..) => {
                let path = self.node_start(mark, None).unwrap_or_default();
                self.record(path.clone(), mark);
                self.stack.push((path, Frame::Sequence { next: 0 }));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields_and_items() {
        let text = "admin:\n  address: 1.2.3.4:5\nlisteners:\n  - name: a\n    domains: [x, y]\n  - name: b\n";
        let map = SourceMap::index(text);
        assert_eq!(
            map.locate("admin.address"),
            Some(Location { line: 2, column: 3 })
        );
        assert_eq!(
            map.locate("listeners[1].name"),
            Some(Location { line: 6, column: 5 })
        );
        assert_eq!(
            map.locate("listeners[0].domains[1]"),
            Some(Location {
                line: 5,
                column: 18
            })
        );
        // An unknown path falls back to its nearest known ancestor.
        assert_eq!(
            map.locate("listeners[1].nope.deeper"),
            Some(Location { line: 6, column: 5 })
        );
    }
}
