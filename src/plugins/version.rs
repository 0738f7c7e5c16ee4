//! Interface version check: a component built against another major version of the
//! `mqtt-broker:plugin` WIT package is refused with an error naming both versions, instead
//! of a linker error about some missing function.

use super::bindings::{PACKAGE, VERSION};
use super::bindings_v02::VERSION as VERSION_02;
use super::PluginError;
use wasmtime::component::Component;
use wasmtime::Engine;

/// Major part under semver rules: for `0.y.z` the minor version plays that role.
fn compat_key(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    Some(if major == 0 { (0, minor) } else { (major, 0) })
}

/// Whether a component built for `theirs` works with a host speaking `ours`.
pub fn compatible(ours: &str, theirs: &str) -> bool {
    matches!((compat_key(ours), compat_key(theirs)), (Some(a), Some(b)) if a == b)
}

/// The plugin API version a component was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `mqtt-broker:plugin@0.1.x` (`wit/plugin.wit`).
    V01,
    /// `mqtt-broker:plugin@0.2.x` (`wit/v0.2/plugin.wit`).
    V02,
}

impl Api {
    /// The version this broker speaks for this API.
    pub fn version(self) -> &'static str {
        match self {
            Api::V01 => VERSION,
            Api::V02 => VERSION_02,
        }
    }
}

/// Checks every import and export of our package in `component` and says which API version
/// it was built for; one component speaks one version.
pub fn check(plugin: &str, engine: &Engine, component: &Component) -> Result<Api, PluginError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n.to_owned())
        .chain(ty.exports(engine).map(|(n, _)| n.to_owned()));
    let prefix = format!("{PACKAGE}/");
    let supported = format!("{PACKAGE}@{VERSION} or @{VERSION_02}");
    let mut api = None;
    for name in names {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let found = rest
            .split_once('@')
            .map(|(_, v)| v)
            .unwrap_or("(unversioned)");
        let this = if compatible(VERSION, found) {
            Api::V01
        } else if compatible(VERSION_02, found) {
            Api::V02
        } else {
            return Err(PluginError::Version {
                plugin: plugin.to_owned(),
                interface: name.clone(),
                found: format!("{PACKAGE}@{found}"),
                supported,
            });
        };
        match api {
            None => api = Some(this),
            Some(a) if a != this => {
                return Err(PluginError::Version {
                    plugin: plugin.to_owned(),
                    interface: name.clone(),
                    found: format!("{PACKAGE}@{found} mixed with @{}", a.version()),
                    supported: "one version per component".into(),
                });
            }
            Some(_) => {}
        }
    }
    // A component that uses none of our interfaces exports no hook; that error names what
    // it does export.
    Ok(api.unwrap_or(Api::V02))
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn semver_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.0", "0.1.3"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("0.1.0", "1.0.0"));
        assert!(compatible("1.2.0", "1.0.0"));
        assert!(!compatible("0.1.0", "(unversioned)"));
        assert!(compatible("0.2.0", "0.2.1"));
    }
}
