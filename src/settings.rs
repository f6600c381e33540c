//! Where settings come from, lowest precedence first: built-in defaults,
//! `--config FILE` (TOML), `HERALD_*` environment variables, flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use herald::Config;

#[derive(clap::Args)]
pub struct Sources {
    /// TOML configuration file (see docs/CONFIGURATION.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [setting: listen; default 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory of the durable store [setting: data_dir; default ./herald-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep history in memory only [setting: memory].
    #[arg(long)]
    memory: bool,
    /// Join a cluster: redis://HOST:PORT or nats://HOST:PORT [setting: cluster.url].
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// Any setting by its name, e.g. `--set stream.heartbeat_secs=5`
    /// (repeatable; the value is read as TOML, else as a string).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

impl Sources {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &self.config {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed("HERALD_")
                .split("__")
                .ignore(&["log", "log_format"]),
        );
        if let Some(listen) = self.listen {
            figment = figment.merge(Serialized::default("listen", listen.to_string()));
        }
        if let Some(dir) = &self.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if self.memory {
            figment = figment.merge(Serialized::default("memory", true));
        }
        if let Some(url) = &self.cluster {
            figment = figment.merge(Serialized::default("cluster.url", url));
        }
        for pair in &self.set {
            let (name, raw) = pair
                .split_once('=')
                .with_context(|| format!("--set takes NAME=VALUE, got {pair:?}"))?;
            figment = figment.merge(Serialized::default(name.trim(), parse_value(raw)));
        }
        let config: Config = figment.extract().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }
}

/// `5` is a number, `true` a boolean, `["a","b"]` a list, anything that is
/// not TOML a string.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
