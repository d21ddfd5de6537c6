//! Secrets named in the configuration: where each comes from and the type that holds it.
//!
//! A secret is never written in the config file itself; the file names an environment
//! variable or a file that holds it. Once read, the value lives in [`Secret`], whose
//! `Debug`, `Display` and `Serialize` only ever show where it came from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Where a secret is read from, as written in the config file:
/// `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable that holds the secret.
    pub env: Option<String>,
    /// Path of a file that holds the secret; relative paths are taken from the config file's folder.
    pub file: Option<PathBuf>,
}

/// Where a resolved secret came from; this is all that is ever shown of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file.
    File(PathBuf),
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Env(name) => write!(f, "env {name}"),
            SecretOrigin::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A credential (token, client secret, private key, webhook URL) that must never be printed.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    origin: SecretOrigin,
}

impl Secret {
    /// The secret's value, for the one place that must send it (an HTTP header, a token request).
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// Where the secret was read from.
    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }

    fn redacted(&self) -> String {
        format!("**redacted** ({})", self.origin)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl SecretSource {
    /// Reads the secret, or explains (without the value) why it could not be read.
    pub fn resolve(
        &self,
        env: &HashMap<String, String>,
        base_dir: &Path,
    ) -> Result<Secret, String> {
        match (&self.env, &self.file) {
            (Some(name), None) => read_env_secret(env, name),
            (None, Some(path)) => read_file_secret(&base_dir.join(path)),
            _ => Err("give exactly one of `env = \"VAR\"` or `file = \"path\"`".to_string()),
        }
    }
}

fn read_env_secret(env: &HashMap<String, String>, name: &str) -> Result<Secret, String> {
    match env.get(name) {
        Some(value) if !value.trim().is_empty() => Ok(Secret {
            value: SecretString::from(value.clone()),
            origin: SecretOrigin::Env(name.to_string()),
        }),
        Some(_) => Err(format!("environment variable {name} is empty")),
        None => Err(format!("environment variable {name} is not set")),
    }
}

fn read_file_secret(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read secret file {}: {err}", path.display()))?;
    // Files written by `echo` or secret managers end with a newline that is not part of the value.
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.trim().is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret {
        value: SecretString::from(value),
        origin: SecretOrigin::File(path.to_path_buf()),
    })
}
