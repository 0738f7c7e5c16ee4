//! Interface version check: a component built against another major version of the
//! `mqtt-broker:plugin` WIT package is refused with an error naming both versions, instead
//! of a linker error about some missing function.

use super::bindings::{PACKAGE, VERSION};
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

/// Checks every import and export of our package in `component`.
pub fn check(plugin: &str, engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n.to_owned())
        .chain(ty.exports(engine).map(|(n, _)| n.to_owned()));
    let prefix = format!("{PACKAGE}/");
    for name in names {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let found = rest
            .split_once('@')
            .map(|(_, v)| v)
            .unwrap_or("(unversioned)");
        if !compatible(VERSION, found) {
            return Err(PluginError::Version {
                plugin: plugin.to_owned(),
                interface: name.clone(),
                found: format!("{PACKAGE}@{found}"),
                supported: format!("{PACKAGE}@{VERSION}"),
            });
        }
    }
    Ok(())
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
    }
}
