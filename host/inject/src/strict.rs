//! Typed, strict reading of Kubernetes objects.
//!
//! k8s-openapi's types ignore fields they do not know, which would make `weft inject` drop a
//! mistyped or newer field without a word. So every object is read twice: into its type (errors
//! name the field, through `serde_path_to_error`), then written back and compared with what was
//! read; a field of the input missing from the typed copy is an unknown field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why an object could not be read into its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// Wrong type or value at `path`.
    Invalid {
        /// The field.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `path` is not a field of the type.
    Unknown {
        /// The field.
        path: String,
    },
}

/// Reads `value` into `T`, refusing unknown fields.
pub fn from_value<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, FieldError> {
    let typed: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        FieldError::Invalid {
            path: if path == "." {
                "(top)".to_owned()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| FieldError::Invalid {
        path: "(top)".to_owned(),
        message: e.to_string(),
    })?;
    match first_lost(value, &back, "") {
        Some(path) => Err(FieldError::Unknown { path }),
        None => Ok(typed),
    }
}

/// `true` for values that carry nothing (`null`, `{}`, `[]`): the typed copy may leave them out.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The first field of `input` that `typed` lost, if any. Scalars are compared loosely (a
/// Quantity written as a number comes back as a string); only lost fields count.
fn first_lost(input: &Value, typed: &Value, path: &str) -> Option<String> {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                Some(w) => first_lost(v, w, &p),
                None if is_empty(v) => None,
                None => Some(p),
            }
        }),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_lost(v, w, &format!("{path}[{i}]"))),
        (Value::Object(_) | Value::Array(_), _) if !is_empty(input) => Some(path.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(yaml: &str) -> Result<Pod, FieldError> {
        let v: Value = serde_saphyr::from_str(yaml).map_err(|e| FieldError::Invalid {
            path: String::new(),
            message: e.to_string(),
        })?;
        from_value(&v)
    }

    #[test]
    fn unknown_field_is_named() {
        let r = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    imagePullPolcy: Always\n",
        );
        assert_eq!(
            r.err(),
            Some(FieldError::Unknown {
                path: "spec.containers[0].imagePullPolcy".into()
            })
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let r = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: eighty}]\n",
        );
        match r {
            Err(FieldError::Invalid { path, .. }) => {
                assert_eq!(path, "spec.containers[0].ports[0].containerPort")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_as_quantities_and_empty_values_are_fine() {
        let r = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, creationTimestamp: null}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {cpu: 1}}\n    env: []\n  volumes: [{name: v, emptyDir: {}}]\n",
        );
        assert!(r.is_ok(), "{r:?}");
    }
}
