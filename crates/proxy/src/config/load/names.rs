//! Names in the config (upstreams, classes): what they may be, and how a list of them reads in
//! an error.

pub(super) fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

pub(super) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("name {name:?} must be 1-64 characters of [A-Za-z0-9_-]"))
    }
}
