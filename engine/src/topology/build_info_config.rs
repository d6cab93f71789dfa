//! `[build_info]`: where the builds' descriptions are (see [`crate::input::build_info`]).

use serde::{Deserialize, Serialize};

/// `[build_info]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfoConfig {
    /// Directory of one description per build (`<build_id>.toml` or `.json`), relative to the
    /// topology file. Unset: builds have no description.
    #[serde(default)]
    pub dir: Option<String>,
}
