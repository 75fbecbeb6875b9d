//! Settings loading shared by every service: `#[serde(default)]` defaults → a TOML file
//! (`APP_CONFIG_FILE`, else the service's default file name, optional) → `APP_…` environment
//! variables with `__` between levels (`APP_DATABASE__URL`, `APP_KAFKA__BROKERS`).

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

pub fn load<T: DeserializeOwned>(default_file: &str) -> Result<T, Box<figment::Error>> {
    let file = std::env::var("APP_CONFIG_FILE").unwrap_or_else(|_| default_file.to_owned());
    Figment::new()
        .merge(Toml::file(file))
        .merge(Env::prefixed("APP_").ignore(&["config_file"]).split("__"))
        .extract()
        .map_err(Box::new)
}
