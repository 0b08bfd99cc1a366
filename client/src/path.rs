//! Absolute eggsfs paths: `/a/b/c`, split into validated names.

use wire::Name;

use crate::error::{ClientError, Result};

/// A parsed absolute path: its components, each a valid [`Name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EggsPath {
    text: String,
    components: Vec<String>,
}

impl EggsPath {
    /// Parses an absolute path. Repeated and trailing slashes are allowed;
    /// `.` and `..` are not (there is no working directory).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| ClientError::BadPath { path: text.to_owned(), reason: reason.to_owned() };
        if !text.starts_with('/') {
            return Err(bad("not an absolute path (eggsfs paths start with /)"));
        }
        let mut components = Vec::new();
        for component in text.split('/').filter(|component| !component.is_empty()) {
            Name::new(component.as_bytes())
                .map_err(|error| bad(&format!("bad name `{component}`: {}", error_reason(&error))))?;
            components.push(component.to_owned());
        }
        Ok(Self { text: text.to_owned(), components })
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The parent path and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(EggsPath, &str)> {
        let (last, parents) = self.components.split_last()?;
        let text = format!("/{}", parents.join("/"));
        Some((EggsPath { text, components: parents.to_vec() }, last.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn error_reason(error: &wire::DecodeError) -> String {
    match error {
        wire::DecodeError::InvalidName(reason) => (*reason).to_owned(),
        other => other.to_string(),
    }
}

impl std::fmt::Display for EggsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_paths() {
        let path = EggsPath::parse("/a//b/").expect("valid");
        assert_eq!(path.components(), ["a", "b"]);
        let (parent, name) = path.split_last().expect("not root");
        assert_eq!((parent.as_str(), name), ("/a", "b"));
        assert!(EggsPath::parse("/").expect("root").is_root());
    }

    #[test]
    fn refuses_relative_and_bad_names() {
        for bad in ["a/b", "", "/a/../b", "/./x", &format!("/{}", "x".repeat(256))] {
            let error = EggsPath::parse(bad).expect_err(bad);
            assert!(matches!(error, ClientError::BadPath { .. }), "{bad}: {error}");
            assert!(!error.to_string().contains('\n'));
        }
    }
}
