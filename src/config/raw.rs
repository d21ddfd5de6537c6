//! The configuration exactly as written: TOML plus `PIPEWARDEN__…` overrides.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. Values stay as written (durations as strings, secrets as sources); turning them
//! into checked settings is `validate`'s job, which can then report every problem at once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::secret::SecretSource;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub connections: Vec<RawConnection>,
    pub slack: Option<RawSlack>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub recycle: RawRecycle,
    #[serde(default)]
    pub api: RawApi,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
    pub busy_timeout: Option<String>,
    pub sqlite_mmap_mib: Option<u32>,
}

/// One `[[connections]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnection {
    pub name: String,
    pub kind: String,
    pub login_url: Option<String>,
    pub instance_url: Option<String>,
    pub api_base_url: Option<String>,
    pub api_version: Option<String>,
    pub auth: RawAuth,
    pub objects: Option<Vec<String>>,
    #[serde(default)]
    pub custom_fields: Vec<String>,
    pub poll_interval: Option<String>,
    pub poll_jitter: Option<f64>,
    pub request_timeout: Option<String>,
    pub page_size: Option<u32>,
    pub lookback: Option<String>,
    pub bulk_threshold: Option<RawBulkThreshold>,
    pub bulk_chunk_size: Option<u32>,
    pub history_window_rows: Option<u32>,
    pub formula_refresh_interval: Option<String>,
    pub id_sweep_interval: Option<String>,
    pub extra_ca_file: Option<PathBuf>,
    pub slack_channel: Option<String>,
    #[serde(default)]
    pub limits: RawLimits,
}

/// `bulk_threshold`: a record count, or `"off"` (environment overrides arrive as text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawBulkThreshold {
    Count(u64),
    Word(String),
}

/// `[connections.auth]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub kind: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub audience: Option<String>,
    pub client_secret: Option<SecretSource>,
    pub refresh_token: Option<SecretSource>,
    pub private_key: Option<SecretSource>,
    pub token: Option<SecretSource>,
}

/// `[connections.limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
    pub daily_budget_share: Option<f64>,
    pub org_ceiling_share: Option<f64>,
    pub hubspot_tier: Option<String>,
}

/// `[slack]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlack {
    pub webhook_url: Option<SecretSource>,
    pub bot_token: Option<SecretSource>,
    pub api_base_url: Option<String>,
    pub default_channel: Option<String>,
    pub messages_per_second_per_channel: Option<u32>,
    pub digest_at: Option<String>,
    #[serde(default)]
    pub channel_digests: BTreeMap<String, String>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: String,
    pub connection: String,
    pub pipeline: Option<String>,
    pub mode: Option<String>,
    pub dry_run: Option<bool>,
    pub max_reverts_per_run: Option<u32>,
    pub channel: Option<String>,
    #[serde(default)]
    pub forbid_skipping: bool,
    #[serde(default)]
    pub closed_lost_requires: Vec<String>,
    #[serde(default)]
    pub backward_requires: Vec<String>,
    #[serde(default)]
    pub exempt_owners: Vec<String>,
    #[serde(default)]
    pub exempt_teams: Vec<String>,
    #[serde(default)]
    pub stages: Vec<RawStageGate>,
}

/// One `[[rules.stages]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStageGate {
    pub stage: String,
    #[serde(default)]
    pub required: Vec<String>,
    pub max_dwell: Option<String>,
}

/// `[recycle]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecycle {
    pub max_actions_per_run: Option<u32>,
    pub summary_channel: Option<String>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

/// One `[[recycle.policies]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub name: String,
    pub connection: String,
    pub kind: String,
    pub object: Option<String>,
    pub after_days: u32,
    pub dry_run: Option<bool>,
    pub max_actions_per_run: Option<u32>,
    pub alert_first: Option<bool>,
    pub grace_days: Option<u32>,
    #[serde(default)]
    pub loss_reasons: Vec<String>,
    #[serde(default)]
    pub persona_titles: Vec<String>,
    #[serde(default)]
    pub persona_industries: Vec<String>,
    #[serde(default)]
    pub exclude_owners: Vec<String>,
    pub exclude_open_deals: Option<bool>,
    pub exclude_do_not_contact: Option<bool>,
    pub cooldown_days: Option<u32>,
    #[serde(default)]
    pub actions: RawActions,
}

/// `[recycle.policies.actions]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawActions {
    pub set_status: Option<String>,
    pub set_lifecycle_stage: Option<String>,
    pub set_owner: Option<String>,
    pub use_assignment_rules: Option<bool>,
    pub add_to_campaign: Option<String>,
    pub campaign_member_status: Option<String>,
    pub add_to_list: Option<String>,
    pub create_task: Option<String>,
    pub task_due_in_days: Option<u32>,
    pub stage_action: Option<String>,
}

/// `[api]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub listen: Option<String>,
    pub bearer_token: Option<SecretSource>,
}

#[cfg(test)]
mod tests {
    //! The example config must document every key the settings accept, and only those.

    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::RawSettings;

    /// A deserializer that feeds placeholder values and records every struct field it is asked for.
    struct KeyCollector<'a> {
        path: String,
        keys: &'a RefCell<BTreeSet<String>>,
    }

    impl KeyCollector<'_> {
        fn child(&self, name: &str) -> KeyCollector<'_> {
            let path = if self.path.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.path)
            };
            KeyCollector {
                path,
                keys: self.keys,
            }
        }
    }

    impl<'de> de::Deserializer<'de> for KeyCollector<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_str("")
        }
        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_bool(false)
        }
        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_u64(1)
        }
        fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_f64(0.5)
        }
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_some(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_seq(OneElement(Some(self)))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            // A secret source is documented as one key holding `{ env = … }` or `{ file = … }`.
            let fields: &'static [&'static str] = if name == "SecretSource" {
                &["env"]
            } else {
                fields
            };
            if name != "SecretSource" {
                for field in fields {
                    self.keys.borrow_mut().insert(self.child(field).path);
                }
            }
            visitor.visit_map(Fields {
                collector: self,
                fields,
                next: 0,
            })
        }
        /// A free-form table (`[slack.channel_digests]`): its keys are the user's own names,
        /// so it is documented by its own key alone.
        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
                String,
                String,
            )>()))
        }
        serde::forward_to_deserialize_any! {
            i8 i16 i32 i64 u8 u16 u64 f32 char str string bytes byte_buf unit unit_struct
            newtype_struct tuple tuple_struct enum identifier ignored_any i128 u128
        }
    }

    struct OneElement<'a>(Option<KeyCollector<'a>>);

    impl<'de> SeqAccess<'de> for OneElement<'_> {
        type Error = de::value::Error;
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Self::Error> {
            self.0
                .take()
                .map(|collector| seed.deserialize(collector))
                .transpose()
        }
    }

    struct Fields<'a> {
        collector: KeyCollector<'a>,
        fields: &'static [&'static str],
        next: usize,
    }

    impl<'de> MapAccess<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Self::Error> {
            let Some(field) = self.fields.get(self.next) else {
                return Ok(None);
            };
            seed.deserialize(de::value::StrDeserializer::new(field))
                .map(Some)
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Self::Error> {
            let field = self.fields[self.next];
            self.next += 1;
            seed.deserialize(self.collector.child(field))
        }
    }

    fn accepted_keys() -> BTreeSet<String> {
        let keys = RefCell::new(BTreeSet::new());
        RawSettings::deserialize(KeyCollector {
            path: String::new(),
            keys: &keys,
        })
        .expect("placeholders deserialize");
        keys.into_inner()
    }

    /// Keys written in the example, commented out or not, with their section.
    fn documented_keys(text: &str) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                section = header.trim_matches(|c| c == '[' || c == ']').to_string();
                keys.insert(section.clone());
            } else if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    keys.insert(if section.is_empty() {
                        key.to_string()
                    } else {
                        format!("{section}.{key}")
                    });
                }
            }
        }
        keys
    }

    #[test]
    fn the_example_config_documents_exactly_the_accepted_keys() {
        let example = include_str!("../../config/pipewarden.example.toml");
        let accepted = accepted_keys();
        let documented = documented_keys(example);
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty(),
            "keys accepted but not documented in the example: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "keys documented in the example that do not exist: {unknown:?}"
        );
        assert!(
            accepted.len() > 80,
            "the collector saw only {} keys",
            accepted.len()
        );
    }
}
