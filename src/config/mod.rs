//! Settings: what the operator can set, their defaults, and how they are read.
//!
//! Sources, lowest precedence first: built-in defaults, the TOML file
//! (`--config`, else `/etc/sandgnat/sandgnat.toml` when present), the seed's
//! environment names (`DATABASE_URL`, ...), `SANDGNAT_<SECTION>__<KEY>`, and
//! command-line flags. Gunicorn's settings keep their names and meaning.
//! Every value is validated here so that the master never starts, and a HUP
//! never applies, a setting that a worker would trip over later.

mod redact;
mod settings;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

pub use redact::redact_url;
pub use settings::*;
pub use validate::SettingsError;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/sandgnat/sandgnat.toml";

/// The seed's environment names and the keys they set.
const SEED_ALIASES: &[(&str, &str)] = &[
    ("INTAKE_MAX_SAMPLE_BYTES", "intake.max_sample_bytes"),
    ("STATIC_ANALYSIS_ENABLED", "intake.static_analysis_enabled"),
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("PROMETHEUS_METRICS_EXPORT_PORT", "metrics.bind"),
];

/// Keys whose values are lists; in the environment they are comma-separated.
const LIST_KEYS: &[&str] = &[
    "proxy.bind",
    "proxy.plain_bind",
    "proxy.forwarded_allow_ips",
    "queue.external",
];

/// Where settings come from, kept so that HUP can read them again.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config F`; when absent the default file is read if it exists.
    pub file: Option<PathBuf>,
    /// Command-line overrides as `(key, value)`; lists are comma-separated.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Reads defaults, file, environment and flags, and validates the result.
    pub fn load(&self) -> Result<Settings, SettingsError> {
        self.load_with_env(std::env::vars().collect())
    }

    pub fn load_with_env(&self, env: HashMap<String, String>) -> Result<Settings, SettingsError> {
        match &self.file {
            Some(path) => {
                if !path.exists() {
                    return Err(SettingsError::MissingFile(path.clone()));
                }
                self.load_from(
                    Some(File::from(path.as_path()).format(FileFormat::Toml)),
                    env,
                )
            }
            None => {
                let path = Path::new(DEFAULT_CONFIG_FILE);
                let file = path
                    .exists()
                    .then(|| File::from(path).format(FileFormat::Toml));
                self.load_from(file, env)
            }
        }
    }

    /// Settings from TOML text read as the settings file would be, and
    /// checked the same way (no environment, no flags).
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        Sources::default().load_from(Some(File::from_str(text, FileFormat::Toml)), HashMap::new())
    }

    fn load_from<F>(
        &self,
        file: Option<F>,
        env: HashMap<String, String>,
    ) -> Result<Settings, SettingsError>
    where
        F: config::Source + Send + Sync + 'static,
    {
        let defaults = Config::try_from(&Settings::default()).map_err(SettingsError::Source)?;
        let mut builder = Config::builder().add_source(defaults);
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        builder = builder.add_source(seed_aliases(&env));
        builder = builder.add_source(sandgnat_environment(env));
        for (key, value) in &self.overrides {
            builder = if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
                builder.set_override(key.as_str(), items)
            } else {
                builder.set_override(key.as_str(), value.as_str())
            }
            .map_err(SettingsError::Source)?;
        }

        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(SettingsError::Source)?;
        validate::validate(&settings)?;
        Ok(settings)
    }
}

/// The seed's variable names, as a source below `SANDGNAT_*`.
fn seed_aliases(env: &HashMap<String, String>) -> Config {
    let mut builder = Config::builder();
    for (name, key) in SEED_ALIASES {
        let Some(value) = env.get(*name) else {
            continue;
        };
        let value = if *key == "metrics.bind" && value.parse::<u16>().is_ok() {
            // The seed exported metrics on every interface at this port.
            format!("0.0.0.0:{value}")
        } else {
            value.clone()
        };
        builder = builder
            .set_override(*key, value)
            .expect("alias keys are static and valid");
    }
    builder.build().unwrap_or_default()
}

fn sandgnat_environment(env: HashMap<String, String>) -> Environment {
    // Only `SANDGNAT_<SECTION>__<KEY>` names are settings; anything else
    // with the prefix (a typo, or another tool's variable) is left alone
    // rather than failing the start.
    let env: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("SANDGNAT_") && k["SANDGNAT_".len()..].contains("__"))
        .collect();
    let mut source = Environment::with_prefix("SANDGNAT")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env));
    for key in LIST_KEYS {
        source = source.with_list_parse_key(key);
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_file() -> Sources {
        // A path that exists and is empty keeps the machine's
        // /etc/sandgnat/sandgnat.toml out of unit tests.
        // One file per call: tests run in parallel and some write to it.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandgnat-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("settings-{n}.toml"));
        std::fs::write(&file, "").unwrap();
        Sources {
            file: Some(file),
            overrides: vec![],
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let s = no_file().load_with_env(env(&[])).unwrap();
        assert_eq!(s.server.workers, 4);
        assert_eq!(s.server.timeout, 120);
        assert_eq!(s.server.backlog, 2048);
        assert_eq!(s.proxy.bind, vec!["0.0.0.0:8443".to_string()]);
        assert_eq!(s.intake.max_sample_bytes, 128 << 20);
        assert_eq!(s.metrics.bind, "127.0.0.1:8001");
        assert_eq!(s.node.name, host_name());
        assert_eq!(s.retention.sample_days, 0, "samples are kept forever");
    }

    #[test]
    fn a_node_name_is_plain_text_for_logs_metrics_and_database_sessions() {
        let named = |name: &str| {
            no_file()
                .load_with_env(env(&[("SANDGNAT_NODE__NAME", name)]))
                .map(|s| s.node.name)
        };
        assert_eq!(named("node-a.lab_2").unwrap(), "node-a.lab_2");
        for bad in ["two words", "a\"b", "x=y", "é", &"n".repeat(65)] {
            let msg = named(bad).unwrap_err().to_string();
            assert!(msg.contains("node.name"), "{bad}: {msg}");
        }
    }

    #[test]
    fn precedence_is_file_then_alias_then_env_then_flag() {
        let mut src = no_file();
        std::fs::write(
            src.file.as_ref().unwrap(),
            "[server]\nworkers = 3\ntimeout = 7\n[intake]\nmax_sample_bytes = 10\n",
        )
        .unwrap();
        let e = env(&[
            ("INTAKE_MAX_SAMPLE_BYTES", "20"),
            ("SANDGNAT_SERVER__TIMEOUT", "9"),
            ("SANDGNAT_PROXY__BIND", "127.0.0.1:1,127.0.0.1:2"),
        ]);
        let s = src.load_with_env(e.clone()).unwrap();
        assert_eq!(s.server.workers, 3);
        assert_eq!(s.server.timeout, 9);
        assert_eq!(s.intake.max_sample_bytes, 20);
        assert_eq!(s.proxy.bind, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        src.overrides.push(("server.workers".into(), "6".into()));
        assert_eq!(src.load_with_env(e).unwrap().server.workers, 6);
    }

    #[test]
    fn sandgnat_env_beats_seed_alias() {
        let e = env(&[
            ("DATABASE_URL", "postgres://a@h/x"),
            ("SANDGNAT_DATABASE__URL", "postgres://b@h/y"),
        ]);
        let s = no_file().load_with_env(e).unwrap();
        assert_eq!(s.database.url, "postgres://b@h/y");
    }

    #[test]
    fn bad_value_names_key_value_and_what_is_allowed() {
        let e = env(&[("SANDGNAT_SERVER__WORKERS", "0")]);
        let msg = no_file().load_with_env(e).unwrap_err().to_string();
        assert!(msg.contains("server.workers"), "{msg}");
        assert!(msg.contains('0'), "{msg}");
        assert!(msg.contains("1 to 256"), "{msg}");

        let e = env(&[("SANDGNAT_SERVER__TIMEOUT", "soon")]);
        let msg = no_file().load_with_env(e).unwrap_err().to_string();
        assert!(msg.contains("timeout"), "{msg}");
    }

    #[test]
    fn unknown_key_in_file_is_refused() {
        let src = no_file();
        std::fs::write(src.file.as_ref().unwrap(), "[server]\nwokers = 3\n").unwrap();
        let msg = src.load_with_env(env(&[])).unwrap_err().to_string();
        assert!(msg.contains("wokers"), "{msg}");
    }

    #[test]
    fn example_config_shows_the_defaults() {
        let src = Sources {
            file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sandgnat.toml").into()),
            overrides: vec![],
        };
        assert_eq!(src.load_with_env(env(&[])).unwrap(), Settings::default());
    }

    #[test]
    fn storage_settings_are_checked() {
        let load = |toml: &str| {
            let src = no_file();
            std::fs::write(src.file.as_ref().unwrap(), toml).unwrap();
            src.load_with_env(env(&[]))
        };
        let s3 = "[storage]\nbackend = \"s3\"\nbucket = \"lab-samples\"\n";
        let s = load(s3).unwrap();
        assert!(s.storage.is_s3() && s.storage.path_style && !s.storage.allow_http);
        assert_eq!(load("").unwrap().storage.backend, "local");
        let refused = |extra: &str, key: &str| {
            let msg = load(&format!("{s3}{extra}")).unwrap_err().to_string();
            assert!(msg.contains(key), "{extra}: {msg}");
            msg
        };
        refused("endpoint = \"http://127.0.0.1:3900\"\n", "allow_http");
        refused("endpoint = \"ftp://s3.example\"\n", "storage.endpoint");
        let msg = refused(
            "endpoint = \"https://GK1:hunter2@s3.example\"\n",
            "storage.endpoint",
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        refused("prefix = \"a/../b\"\n", "storage.prefix");
        refused("access_key_id = \"GK1\"\n", "access_key_id");
        let msg = load("[storage]\nbackend = \"s3\"\nbucket = \"Lab_Samples\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("storage.bucket"), "{msg}");
        let msg = load("[storage]\nbackend = \"disk\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("local or s3"), "{msg}");
        let ok = load(&format!(
            "{s3}endpoint = \"http://127.0.0.1:3900\"\nallow_http = true\nprefix = \"node-a/samples\"\n"
        ))
        .unwrap();
        assert_eq!(ok.storage.port(), Some(3900));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:********@db:5432/x"
        );
        assert_eq!(redact_url("postgres:///sandgnat"), "postgres:///sandgnat");
        assert_eq!(
            redact_url("postgres://u@db/x?sslmode=require&password=secret"),
            "postgres://u@db/x?sslmode=require&password=********"
        );
        assert_eq!(
            redact_url("postgres://u:se/cr@et@db/x"),
            "postgres://u:********@db/x"
        );
        assert_eq!(
            redact_url("redis://db:6379/0?Password=secret"),
            "redis://db:6379/0?Password=********"
        );
        assert_eq!(
            redact_url("host=db user=u password=secret dbname=x"),
            "host=db user=u password=******** dbname=x"
        );
        let mut s = Settings::default();
        s.redis.url = Some("redis://:hunter2@127.0.0.1/0".into());
        s.database.migrate_url = Some("postgres://owner:sesame@db/x".into());
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("sesame"), "{shown}");
    }
}
