//! A real S3 server for the tests: a single-node Garage on loopback, in a
//! temporary directory, with one bucket and one key pair of its own. The
//! binary is built once by `packaging/dev/bootstrap.sh` into
//! [`GARAGE_ROOT`] (outside the clone, like the target directory);
//! `SANDGNAT_GARAGE` names another one.
//!
//! Garage sets itself up: `garage server --single-node --default-bucket`
//! assigns this node the whole layout and applies it, imports the key pair
//! from `GARAGE_DEFAULT_ACCESS_KEY`/`GARAGE_DEFAULT_SECRET_KEY` and makes
//! the bucket `GARAGE_DEFAULT_BUCKET` with that key allowed to read, write
//! and own it. Metadata in SQLite, replication factor 1, data and metadata
//! synced, as a deployment that acknowledges only durable writes would.
//!
//! The test reads the bucket back with its own client (`object_store`
//! used directly, not through the appliance's `storage` module).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

/// Where `bootstrap.sh` installs Garage (`cargo install --root`).
pub const GARAGE_ROOT: &str = "/var/tmp/sandgnat-s3/garage";
/// The region Garage answers for.
pub const REGION: &str = "garage";

/// The Garage binary the tests run.
pub fn garage_bin() -> PathBuf {
    let bin = std::env::var_os("SANDGNAT_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(GARAGE_ROOT).join("bin/garage"));
    assert!(
        bin.is_file(),
        "no Garage at {}: run packaging/dev/bootstrap.sh (it builds Garage 2.5.0 into {GARAGE_ROOT})",
        bin.display()
    );
    bin
}

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub struct Garage {
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    pub port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Garage {
    /// Starts Garage and returns once its S3 API answers this key.
    pub fn start(tag: &str) -> Self {
        let dir = super::temp_dir(&format!("garage-{tag}"));
        let port = super::free_port();
        let rpc = super::free_port();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{dir}/meta\"\n\
                 data_dir = \"{dir}/data\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 metadata_fsync = true\n\
                 data_fsync = true\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                dir = dir.display(),
                secret = hex(32),
            ),
        )
        .unwrap();
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            bucket: format!("samples-{}", hex(4)),
            access_key: format!("GK{}", hex(12)),
            secret_key: hex(32),
            log: dir.join("garage.log"),
            config,
            dir,
            child: None,
        };
        g.resume();
        g
    }

    /// Starts the server (again, after `stop`: same data, same port) and
    /// waits until the bucket answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "Garage is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.answers() {
                Ok(()) => break,
                Err(e) => {
                    if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("garage exited ({st}): {e}; log:\n{}", self.log_text());
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "garage did not answer within 60 s: {e}; log:\n{}",
                            self.log_text()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Stops the server (SIGTERM, then waits): the store goes away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `[storage]` section that points an appliance at this bucket.
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{REGION}\"\n\
             prefix = \"{prefix}\"\npath_style = true\nallow_http = true\n",
            self.endpoint, self.bucket
        )
    }

    /// The environment an appliance needs for this bucket (what the
    /// unit's environment file holds).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }

    fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(REGION)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            // One try: the readiness poll retries by itself.
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap()
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Whether the S3 API answers this key pair (a HEAD of a key that
    /// need not exist).
    fn answers(&self) -> Result<(), object_store::Error> {
        let client = self.client();
        match Self::block_on(async { client.head(&Key::from("readiness")).await }) {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The object's size, if it is there.
    pub fn head(&self, key: &str) -> Option<u64> {
        let (client, key) = (self.client(), Key::from(key));
        match Self::block_on(async { client.head(&key).await }) {
            Ok(meta) => Some(meta.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("head {key}: {e}"),
        }
    }

    /// The object's bytes, if it is there.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (client, key) = (self.client(), Key::from(key));
        Self::block_on(async {
            match client.get(&key).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        })
    }

    /// Writes `bytes` at `key`, as any other holder of a key to the
    /// bucket could.
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        let (client, key) = (self.client(), Key::from(key));
        Self::block_on(async { client.put(&key, bytes.into()).await }).unwrap();
    }

    /// Every key in the bucket.
    pub fn keys(&self) -> Vec<String> {
        use futures_util::TryStreamExt;
        let client = self.client();
        let mut keys: Vec<String> = Self::block_on(async {
            client
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap()
        });
        keys.sort();
        keys
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("SANDGNAT_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The key of a sample in the bucket under `prefix`, computed here from
/// the layout the README promises, not by the appliance's code.
pub fn sample_key(prefix: &str, sha256: &str) -> String {
    let address = format!("{}/{}/{sha256}", &sha256[..2], &sha256[2..4]);
    if prefix.is_empty() {
        address
    } else {
        format!("{prefix}/{address}")
    }
}
