//! The TOML configuration file: settings under their keys, and `[namespaces.NAME]`
//! tables.

use std::path::Path;

use oncely::HumanDuration;
use oncely::config::ConfigFields;
use serde::Deserialize;

use super::Layer;
use crate::Error;

/// A `[namespaces.NAME]` table: the namespace's whole configuration (every field of
/// [`ConfigFields`]), and whether a change that forgets remembered IDs at start-up is
/// allowed.
///
/// Unknown keys are refused when the file is read; missing fields when the settings
/// are resolved, naming the namespace and every missing field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceTable {
    /// `generations`.
    pub generations: Option<u32>,
    /// `generation_capacity`.
    pub generation_capacity: Option<u64>,
    /// `generation_span`.
    pub generation_span: Option<HumanDuration>,
    /// `fp_rate`.
    pub fp_rate: Option<f64>,
    /// `exact_generations`.
    pub exact_generations: Option<u32>,
    /// Allows a configuration that would drop live generations or exact tables of
    /// the existing namespace at start-up (and with them the IDs they remember).
    #[serde(default)]
    pub drop_now: bool,
}

impl NamespaceTable {
    /// The configuration fields the table gives.
    #[must_use]
    pub fn fields(&self) -> ConfigFields {
        ConfigFields {
            generations: self.generations,
            generation_capacity: self.generation_capacity,
            generation_span: self.generation_span,
            fp_rate: self.fp_rate,
            exact_generations: self.exact_generations,
        }
    }
}

/// Reads and parses a TOML file.
///
/// # Errors
///
/// [`Error::ConfigFile`] naming the file, with the parser's message (which names
/// the key and line).
pub fn load(path: &Path) -> Result<Layer, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|reason| Error::ConfigFile {
        path: path.to_owned(),
        reason,
    })
}

/// Parses TOML text. Unknown keys are refused, so a misspelt setting is an error
/// rather than silently ignored.
///
/// # Errors
///
/// The parser's message.
pub fn parse(text: &str) -> Result<Layer, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_table_takes_exactly_the_configuration_fields_and_drop_now() {
        let mut text = String::from("[namespaces.orders]\ndrop_now = true\n");
        for (i, field) in ConfigFields::NAMES.iter().enumerate() {
            let value = match *field {
                "generation_span" => "\"10m\"".to_owned(),
                "fp_rate" => "0.01".to_owned(),
                _ => (i + 2).to_string(),
            };
            text.push_str(&format!("{field} = {value}\n"));
        }
        let layer = parse(&text).unwrap();
        let table = &layer.namespaces["orders"];
        assert!(table.drop_now);
        assert!(table.fields().missing().is_empty(), "{table:?}");
        let err = parse("[namespaces.orders]\ngenerationz = 4").unwrap_err();
        assert!(err.contains("generationz"), "{err}");
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = parse("max_idz = 3").unwrap_err();
        assert!(err.contains("max_idz"), "{err}");
        let err = parse("durability = \"fast\"").unwrap_err();
        assert!(err.contains("durability") || err.contains("fast"), "{err}");
        let err = parse("max_body_bytes = \"4 parsecs\"").unwrap_err();
        assert!(err.contains("max_body_bytes"), "{err}");
        let err = parse("config = \"other.toml\"").unwrap_err();
        assert!(err.contains("config"), "{err}");
    }
}
