//! YAML to [`Config`] with serde-saphyr: the field path and the location of the first error.

use std::borrow::Cow;

use serde::Deserialize;
use serde_saphyr::{Error, Localizer, MessageFormatter, UserMessageFormatter};

use crate::error::Problem;
use crate::locate::Location;
use crate::schema::Config;

/// Deserializes `text` into a [`Config`], without the semantic checks; a failure names the field
/// path reached and where the parser was.
pub(crate) fn deserialize(text: &str) -> Result<Config, Problem> {
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|e| Problem {
        path: field_path(&track.path()),
        location: e.location().map(|l| Location {
            line: usize::try_from(l.line()).unwrap_or(usize::MAX),
            column: usize::try_from(l.column()).unwrap_or(usize::MAX),
        }),
        message: e.render_with_options(serde_saphyr::render_options! {
            formatter: &Messages,
            snippets: serde_saphyr::SnippetMode::Off,
        }),
    })
}

/// The parser's options: the YAML reading `serde_yaml` 0.9 had (what it accepted, and what
/// untyped plugin `configuration` values become), except that a repeated key is an error.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // `yes`, `on`, ... are strings, as in YAML 1.2; a boolean is `true` or `false`.
        strict_booleans: true,
        // `<<` is an ordinary key (so an unknown field in the schema), not a merge.
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        // A key given twice is refused, not silently overridden.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        // In untyped values (plugin configuration) `017` and `1_000` stay strings, and `.nan`
        // reaches the visitor (JSON makes it null).
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        // `name: ~` is the text `~` for a string field, and `name:` the empty string.
        null_as_string: true,
        // The location is reported apart from the message; no source snippets.
        with_snippet: false,
    }
}

/// serde_path_to_error's path, `""` for the document itself; a trailing `?` (the error was in a
/// mapping key, such as a repeated one, which the message names) is dropped.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    let mut path = path.as_str();
    while let Some(parent) = path.strip_suffix('?') {
        path = parent.strip_suffix('.').unwrap_or(parent);
    }
    if path == "." {
        String::new()
    } else {
        path.to_owned()
    }
}

/// The parser's user-facing messages, without their ` at line L, column C` suffix (the location
/// is reported apart, as `file:line:column`), and with serde's own wording for unknown fields
/// and variants (`expected one of `a`, `b``), as JSON plugin configurations get.
struct Messages;

impl MessageFormatter for Messages {
    fn localizer(&self) -> &dyn Localizer {
        &NoLocation
    }

    fn format_message<'a>(&self, err: &'a Error) -> Cow<'a, str> {
        match err {
            Error::SerdeUnknownField {
                field, expected, ..
            } => Cow::Owned(unknown("field", field, expected)),
            Error::SerdeUnknownVariant {
                variant, expected, ..
            } => Cow::Owned(unknown("variant", variant, expected)),
            _ => UserMessageFormatter.format_message(err),
        }
    }
}

/// serde's `unknown field `x`, expected one of `a`, `b`` (or `there are no fields`).
fn unknown(what: &str, name: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown {what} `{name}`, there are no {what}s"),
        [one] => format!("unknown {what} `{name}`, expected {one}"),
        [a, b] => format!("unknown {what} `{name}`, expected {a} or {b}"),
        all => format!(
            "unknown {what} `{name}`, expected one of {}",
            all.join(", ")
        ),
    }
}

struct NoLocation;

impl Localizer for NoLocation {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _: serde_saphyr::Location) -> Cow<'a, str> {
        base
    }

    fn alias_used_at(&self, _: serde_saphyr::Location) -> String {
        String::new()
    }
}
