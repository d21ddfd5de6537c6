//! Configuration: one TOML file plus `PIPEWARDEN__SECTION__KEY` environment overrides.
//!
//! Loading runs in two passes. The file is first read on its own, strictly, so that a
//! syntax error, an unknown key or a wrong type is reported with the file, the line and
//! the key path. Then the `config` crate merges the file with the environment overrides,
//! and [`validate`] checks the result as a whole and reads the secrets it names.

mod raw;
pub mod secret;
pub mod settings;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

pub use secret::Secret;
pub use settings::Settings;
pub use validate::parse_store_url;

use raw::RawSettings;

/// Prefix of environment overrides; `__` separates levels so `poll_interval` stays one key.
pub const ENV_PREFIX: &str = "PIPEWARDEN";
const ENV_SEPARATOR: &str = "__";

/// One thing wrong with a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path as written in the file, e.g. `connections[0].auth.token`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded. Messages name the file and key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {} does not exist", path.display())]
    Missing {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's explanation.
        message: String,
    },
    /// The settings are well-formed but wrong: unknown keys, wrong types, bad values.
    #[error("invalid configuration in {origin}:\n{}", format_problems(problems))]
    Invalid {
        /// The file and/or environment the settings came from.
        origin: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems behind an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads settings from `path` (or built-in defaults when `None`) and the process environment.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    // Variables that are not UTF-8 cannot be pipewarden settings or secrets; skip them
    // rather than panic as `std::env::vars` would.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    load_with_env(path, &env)
}

/// Loads settings as [`load`] does, with an explicit environment (tests use this).
pub fn load_with_env(
    path: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let text = path.map(read_config_file).transpose()?;
    if let (Some(path), Some(text)) = (path, text.as_deref()) {
        check_file_alone(path, text)?;
    }
    let overrides = override_vars(env);
    let raw = merge_with_overrides(path, text.as_deref(), &overrides)?;
    validate::validate(raw, env, path).map_err(|problems| ConfigError::Invalid {
        origin: describe_origin(path, &overrides),
        problems,
    })
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Strict pass over the file alone: the TOML parser knows lines, serde knows key paths.
fn check_file_alone(path: &Path, text: &str) -> Result<(), ConfigError> {
    let deserializer = toml::de::Deserializer::parse(text).map_err(|err| {
        let (line, column) = line_and_column(text, err.span().map_or(0, |span| span.start));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().trim().to_string(),
        }
    })?;
    serde_path_to_error::deserialize::<_, RawSettings>(deserializer)
        .map(drop)
        .map_err(|err| {
            let key = display_path(&err.path().to_string());
            let inner = err.into_inner();
            let at = inner
                .span()
                .map(|span| {
                    let (line, _) = line_and_column(text, span.start);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::Invalid {
                origin: path.display().to_string(),
                problems: vec![Problem {
                    key,
                    message: format!("{}{at}", inner.message().trim()),
                }],
            }
        })
}

/// Merges the file with the overrides through the `config` crate.
fn merge_with_overrides(
    path: Option<&Path>,
    text: Option<&str>,
    overrides: &HashMap<String, String>,
) -> Result<RawSettings, ConfigError> {
    let mut builder = Config::builder();
    if let Some(text) = text {
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    let environment = Environment::with_prefix(ENV_PREFIX)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .source(Some(overrides.clone().into_iter().collect()));
    let invalid = |key: String, message: String| ConfigError::Invalid {
        origin: describe_origin(path, overrides),
        problems: vec![Problem { key, message }],
    };
    let merged = builder
        .add_source(environment)
        .build()
        .map_err(|err| invalid("(environment)".to_string(), err.to_string()))?;
    serde_path_to_error::deserialize::<_, RawSettings>(merged).map_err(|err| {
        let key = display_path(&err.path().to_string());
        let message = err.into_inner().to_string();
        let blamed = blame_override(&key, &message, overrides);
        invalid(key, format!("{message}{blamed}"))
    })
}

/// Only `PIPEWARDEN__…` variables are overrides; `PIPEWARDEN_CONFIG` and secrets are not.
fn override_vars(env: &HashMap<String, String>) -> HashMap<String, String> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    env.iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Names the override variable behind an error found only after merging.
fn blame_override(key: &str, message: &str, overrides: &HashMap<String, String>) -> String {
    let to_var = |path: &str| {
        format!(
            "{ENV_PREFIX}{ENV_SEPARATOR}{}",
            path.replace('.', ENV_SEPARATOR).to_uppercase()
        )
    };
    // For unknown keys the path may stop at the parent section; the field is in the message.
    let unknown_field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(|field| {
            if key.is_empty() || key.starts_with('(') {
                field.to_string()
            } else {
                format!("{key}.{field}")
            }
        });
    [Some(key.to_string()), unknown_field]
        .into_iter()
        .flatten()
        .map(|path| to_var(&path))
        .find(|name| overrides.contains_key(name))
        .map(|name| format!(" (set by environment variable {name})"))
        .unwrap_or_default()
}

fn describe_origin(path: Option<&Path>, overrides: &HashMap<String, String>) -> String {
    let mut names: Vec<&str> = overrides.keys().map(String::as_str).collect();
    names.sort_unstable();
    match (path, names.is_empty()) {
        (Some(path), true) => path.display().to_string(),
        (Some(path), false) => format!("{} with overrides {}", path.display(), names.join(", ")),
        (None, true) => "built-in defaults".to_string(),
        (None, false) => format!("built-in defaults with overrides {}", names.join(", ")),
    }
}

/// serde_path_to_error writes `.` for the root; the key is then the whole file.
fn display_path(path: &str) -> String {
    if path == "." {
        "(top level)".to_string()
    } else {
        path.to_string()
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}
