//! Which fields of a protobuf message are set, by name: the generated types have no
//! reflection, so a message whose supported fields have been cleared is compared with the
//! default message through its `{:#?}` rendering (one top-level field per entry). Used to NACK a
//! resource that sets a field Weft does not implement, naming the field, instead of silently
//! ignoring it.

use std::collections::BTreeMap;
use std::fmt::Debug;

/// The top-level fields of `rest` that differ from `T::default()`.
pub(crate) fn set_fields<T: Debug + Default>(rest: &T) -> Vec<String> {
    let have = top_level(&format!("{rest:#?}"));
    let default = top_level(&format!("{:#?}", T::default()));
    have.into_iter()
        .filter(|(name, value)| default.get(name) != Some(value))
        .map(|(name, _)| name)
        .collect()
}

/// `Err` naming the first unsupported field of `rest` under `path`, if any.
pub(crate) fn reject_rest<T: Debug + Default>(path: &str, rest: &T) -> Result<(), String> {
    match set_fields(rest).first() {
        None => Ok(()),
        Some(field) => Err(format!(
            "{path}.{field}: unimplemented (Weft does not support this field; see docs/xds.md)"
        )),
    }
}

/// Splits a pretty-printed struct into its top-level `name: value` entries.
fn top_level(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().skip(1) {
        let top = line.strip_prefix("    ").filter(|l| !l.starts_with(' '));
        let field = top.and_then(|l| {
            let (name, value) = l.split_once(": ")?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| (name.to_owned(), value.to_owned()))
        });
        match field {
            Some((name, value)) => {
                if let Some((n, v)) = current.take() {
                    out.insert(n, v);
                }
                current = Some((name, value));
            }
            None => {
                if let Some((_, v)) = current.as_mut() {
                    v.push('\n');
                    v.push_str(line);
                }
            }
        }
    }
    if let Some((n, v)) = current {
        out.insert(n, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    #[expect(
        dead_code,
        reason = "read only through Debug, as the protobuf messages are"
    )]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, Default)]
    #[expect(
        dead_code,
        reason = "read only through Debug, as the protobuf messages are"
    )]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        list: Vec<u32>,
    }

    #[test]
    fn names_only_the_fields_that_differ_from_the_default() {
        assert!(set_fields(&Outer::default()).is_empty());
        let o = Outer {
            name: String::new(),
            inner: Some(Inner { a: 0 }),
            list: vec![1],
        };
        assert_eq!(set_fields(&o), vec!["inner".to_owned(), "list".to_owned()]);
        let e = reject_rest("cluster \"c\"", &o).unwrap_err();
        assert!(e.starts_with("cluster \"c\".inner: unimplemented"), "{e}");
    }
}
