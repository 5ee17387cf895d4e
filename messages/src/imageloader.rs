//! imageloader: verified VM components (REFERENCE.md; ARCHITECTURE.md "The termina component").

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ImageloaderRequest {
    /// Lists components found under STATE/components.
    ListComponents {},
    /// Verifies every file of a component and returns its paths; `version` None = newest verified.
    LoadComponent {
        name: String,
        #[serde(default)]
        version: Option<String>,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub name: String,
    pub version: String,
    pub path: String,
}

/// Paths of a verified component's files.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedComponent {
    pub name: String,
    pub version: String,
    pub kernel: String,
    pub rootfs: String,
    pub tools: String,
    pub initrd: Option<String>,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ImageloaderReply {
    Components { components: Vec<ComponentInfo> },
    Loaded { component: LoadedComponent },
}
