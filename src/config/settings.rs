//! `settings.json`: the machine-local settings of one broker.

use std::path::{Path, PathBuf};

use scout_mesh::names::{Label, NamePart};
use serde::{Deserialize, Serialize};

use super::json_file::{ConfigError, JsonFile};

/// The settings file format this scout writes.
pub const SETTINGS_VERSION: u32 = 1;

/// Default port of the local HTTP surface (the local runtime's `PORT`).
pub const HTTP_PORT_DEFAULT: u16 = 3100;

/// Default UDP port of the mesh (QUIC).
pub const MESH_PORT_DEFAULT: u16 = 3101;

/// Seeds a broker dials at most; a list longer than this is a config
/// mistake (a mesh needs one or two reachable seeds, not hundreds).
pub const SEEDS_MAX: usize = 64;

/// Workspace roots scanned at most, for the same reason.
pub const WORKSPACE_ROOTS_MAX: usize = 64;

/// The settings of one broker. Missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Format version of this file.
    pub version: u32,
    /// This broker's node name (`laptop`), a DNS label.
    pub node_name: String,
    /// Port of the local HTTP surface on 127.0.0.1; 0 picks a free one.
    pub http_port: u16,
    /// UDP port of the mesh; 0 picks a free one.
    pub mesh_port: u16,
    /// Directories scanned for projects (`.openscout/project.json`, markers).
    pub workspace_roots: Vec<PathBuf>,
    /// Brokers to dial at start, as `host:port`.
    pub seeds: Vec<String>,
    /// Which discovery sources run.
    pub discovery: DiscoverySettings,
    /// Git worktrees made for definitions that declare `worktrees`.
    pub worktrees: WorktreeSettings,
    /// Desktop notifications and webhooks for pending approvals.
    pub notifications: crate::daemon::notify::NotificationSettings,
    /// How approvals this broker owns wait for a person.
    #[serde(skip_serializing_if = "ApprovalSettings::is_default")]
    pub approvals: ApprovalSettings,
}

/// The `approvals` section: how long a request waits for a person.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Seconds a request waits when it names no deadline of its own; the
    /// built-in default (`approvals::DEADLINE_DEFAULT`) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

impl ApprovalSettings {
    fn is_default(&self) -> bool {
        *self == ApprovalSettings::default()
    }

    /// The deadline of requests that name none.
    pub fn deadline(&self) -> std::time::Duration {
        self.deadline_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(crate::daemon::approvals::DEADLINE_DEFAULT)
    }
}

/// Where worktrees made on demand go, and when idle ones are cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorktreeSettings {
    /// An absolute directory; `<home>/worktrees` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Clean, merged worktrees idle this many days are removed; 0 never.
    pub idle_days: u32,
}

/// Longest idle period accepted for worktree cleanup: ten years is already
/// "never"; more is a typo.
pub const WORKTREE_IDLE_DAYS_MAX: u32 = 3650;

impl Settings {
    /// Where this broker makes worktrees.
    pub fn worktrees_root(&self, home: &crate::home::Home) -> PathBuf {
        self.worktrees
            .root
            .clone()
            .unwrap_or_else(|| home.state_dir.join("worktrees"))
    }
}

/// Discovery switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverySettings {
    /// Advertise and browse `_scout._udp.local.` on the LAN.
    pub mdns: bool,
    /// Read peers from tailscaled.
    pub tailscale: TailscaleSettings,
}

/// Tailscale discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailscaleSettings {
    /// Whether to ask tailscaled for peers at all.
    pub enabled: bool,
    /// Only peers carrying one of these tags (empty: every peer).
    pub tags: Vec<String>,
    /// tailscaled's LocalAPI socket; empty: the platform's default path.
    pub socket: String,
    /// How often tailscaled's peer list is read again.
    pub poll_interval_ms: u64,
    /// The mesh port the tailnet peers' brokers listen on; 0: this broker's
    /// `mesh_port`, or 3101 when that is 0 too.
    pub mesh_port: u16,
    /// Admit peers by their tailnet identity, without invite codes. Off
    /// while both lists are empty.
    pub admit: TailnetAdmitSettings,
}

/// Which tailnet identities are admitted to the mesh without an invite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailnetAdmitSettings {
    /// Tailscale ACL tags (`tag:mesh-broker`); a tagged node matches when it
    /// carries one of them.
    pub tags: Vec<String>,
    /// Tailscale login names (`alice@example.com`); an untagged node
    /// matches when its owner is one of them.
    pub users: Vec<String>,
}

/// Default interval between two reads of tailscaled's peer list.
pub const TAILSCALE_POLL_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// Shortest poll interval accepted: tailscaled answers from memory, but a
/// tighter loop only burns CPU.
pub const TAILSCALE_POLL_INTERVAL_MS_MIN: u64 = 100;

/// Longest poll interval accepted: an offline peer must be noticed within
/// minutes, not hours.
pub const TAILSCALE_POLL_INTERVAL_MS_MAX: u64 = 600_000;

/// Tags or users listed at most (filter and admit lists alike).
pub const TAILNET_NAMES_MAX: usize = 64;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            version: SETTINGS_VERSION,
            node_name: default_node_name(),
            http_port: HTTP_PORT_DEFAULT,
            mesh_port: MESH_PORT_DEFAULT,
            workspace_roots: Vec::new(),
            seeds: Vec::new(),
            discovery: DiscoverySettings::default(),
            worktrees: WorktreeSettings::default(),
            notifications: Default::default(),
            approvals: ApprovalSettings::default(),
        }
    }
}

impl Default for DiscoverySettings {
    fn default() -> DiscoverySettings {
        DiscoverySettings {
            mdns: true,
            tailscale: TailscaleSettings::default(),
        }
    }
}

impl Default for TailscaleSettings {
    fn default() -> TailscaleSettings {
        TailscaleSettings {
            enabled: true,
            tags: Vec::new(),
            socket: String::new(),
            poll_interval_ms: TAILSCALE_POLL_INTERVAL_MS_DEFAULT,
            mesh_port: 0,
            admit: TailnetAdmitSettings::default(),
        }
    }
}

/// Loads `settings.json`, validated; `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<JsonFile<Settings>>, ConfigError> {
    let Some(file) = JsonFile::<Settings>::load(path)? else {
        return Ok(None);
    };
    validate(&file.value, path, &file.text)?;
    Ok(Some(file))
}

/// Loads `settings.json` or explains how to create it.
pub fn load_required(path: &Path) -> anyhow::Result<JsonFile<Settings>> {
    load(path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no settings at {}; run `scout setup` first (with the same --home)",
            path.display()
        )
    })
}

/// Checks the values the types cannot: names, seeds, list sizes.
pub fn validate(settings: &Settings, path: &Path, text: &str) -> Result<(), ConfigError> {
    if settings.version > SETTINGS_VERSION {
        return Err(ConfigError::field(
            path,
            text,
            "version",
            format!(
                "written by a newer scout (version {}); this scout knows up to {SETTINGS_VERSION}",
                settings.version
            ),
        ));
    }
    if let Err(err) = Label::parse(&settings.node_name, NamePart::Node) {
        return Err(ConfigError::field(path, text, "node_name", err.to_string()));
    }
    if settings.seeds.len() > SEEDS_MAX {
        return Err(ConfigError::field(
            path,
            text,
            "seeds",
            format!("{} seeds; at most {SEEDS_MAX}", settings.seeds.len()),
        ));
    }
    for (idx, seed) in settings.seeds.iter().enumerate() {
        if let Err(message) = parse_seed(seed) {
            return Err(ConfigError::field(
                path,
                text,
                &format!("seeds[{idx}]"),
                message,
            ));
        }
    }
    validate_tailscale(&settings.discovery.tailscale, path, text)?;
    if let Some(root) = &settings.worktrees.root
        && !root.is_absolute()
    {
        return Err(ConfigError::field(
            path,
            text,
            "worktrees.root",
            format!("`{}` must be an absolute path", root.display()),
        ));
    }
    if settings.worktrees.idle_days > WORKTREE_IDLE_DAYS_MAX {
        return Err(ConfigError::field(
            path,
            text,
            "worktrees.idle_days",
            format!(
                "{} days; at most {WORKTREE_IDLE_DAYS_MAX} (0 keeps worktrees forever)",
                settings.worktrees.idle_days
            ),
        ));
    }
    if let Err(message) = settings.notifications.check() {
        return Err(ConfigError::field(path, text, "notifications", message));
    }
    if let Some(secs) = settings.approvals.deadline_secs {
        let max = crate::daemon::approvals::DEADLINE_MAX.as_secs();
        if secs == 0 || secs > max {
            return Err(ConfigError::field(
                path,
                text,
                "approvals.deadline_secs",
                format!("{secs} seconds; between 1 and {max} (a day)"),
            ));
        }
    }
    if settings.workspace_roots.len() > WORKSPACE_ROOTS_MAX {
        return Err(ConfigError::field(
            path,
            text,
            "workspace_roots",
            format!(
                "{} roots; at most {WORKSPACE_ROOTS_MAX}",
                settings.workspace_roots.len()
            ),
        ));
    }
    Ok(())
}

/// Checks `discovery.tailscale`: interval bounds, tag syntax, list sizes.
fn validate_tailscale(
    tailscale: &TailscaleSettings,
    path: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    let interval = tailscale.poll_interval_ms;
    if !(TAILSCALE_POLL_INTERVAL_MS_MIN..=TAILSCALE_POLL_INTERVAL_MS_MAX).contains(&interval) {
        return Err(ConfigError::field(
            path,
            text,
            "discovery.tailscale.poll_interval_ms",
            format!(
                "{interval} is out of range; use {TAILSCALE_POLL_INTERVAL_MS_MIN}-{TAILSCALE_POLL_INTERVAL_MS_MAX}"
            ),
        ));
    }
    let lists = [
        ("discovery.tailscale.tags", &tailscale.tags, true),
        (
            "discovery.tailscale.admit.tags",
            &tailscale.admit.tags,
            true,
        ),
        (
            "discovery.tailscale.admit.users",
            &tailscale.admit.users,
            false,
        ),
    ];
    for (field, names, are_tags) in lists {
        if names.len() > TAILNET_NAMES_MAX {
            return Err(ConfigError::field(
                path,
                text,
                field,
                format!("{} entries; at most {TAILNET_NAMES_MAX}", names.len()),
            ));
        }
        for (idx, name) in names.iter().enumerate() {
            let bad = name.trim().is_empty()
                || name.chars().any(char::is_whitespace)
                || (are_tags && !name.starts_with("tag:"));
            if bad {
                let expected = if are_tags {
                    "a Tailscale tag such as `tag:mesh-broker`"
                } else {
                    "a Tailscale login name such as `alice@example.com`"
                };
                return Err(ConfigError::field(
                    path,
                    text,
                    &format!("{field}[{idx}]"),
                    format!("`{name}` is not {expected}"),
                ));
            }
        }
    }
    Ok(())
}

/// Splits a seed `host:port` (`[v6]:port` for IPv6 literals) into its parts.
pub fn parse_seed(seed: &str) -> Result<(String, u16), String> {
    let (host, port) = seed
        .rsplit_once(':')
        .ok_or_else(|| format!("seed `{seed}` has no port; write host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("seed `{seed}` has no host; write host:port"));
    }
    if host.chars().any(|ch| ch.is_whitespace() || ch == '/') {
        return Err(format!("seed `{seed}` has a bad host `{host}`"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("seed `{seed}` has a bad port `{port}`; use 1-65535"))?;
    Ok((host.to_owned(), port))
}

/// A node name from the machine's host name: its first DNS label, folded to
/// the characters a node name may hold.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .and_then(|out| String::from_utf8(out.stdout).ok())
        })
        .unwrap_or_default();
    node_name_from_host(&host)
}

/// Folds a host name into a valid node name (`My-Laptop.local` → `my-laptop`).
pub fn node_name_from_host(host: &str) -> String {
    let first_label = host.trim().split('.').next().unwrap_or_default();
    let folded: String = first_label
        .chars()
        .map(|ch| {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
                ch
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = folded.trim_matches('-');
    if trimmed.is_empty() {
        "node".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fold_to_node_names() {
        assert_eq!(node_name_from_host("My_Laptop.local\n"), "my-laptop");
        assert_eq!(node_name_from_host("---"), "node");
        assert_eq!(node_name_from_host(""), "node");
    }

    #[test]
    fn seeds_need_host_and_port() {
        assert_eq!(parse_seed("devbox:3101"), Ok(("devbox".into(), 3101)));
        assert_eq!(parse_seed("[::1]:3101"), Ok(("::1".into(), 3101)));
        assert!(parse_seed("devbox").is_err());
        assert!(parse_seed("devbox:0").is_err());
        assert!(parse_seed(":3101").is_err());
    }

    #[test]
    fn the_approval_deadline_is_bounded() {
        let text = "{\n  \"approvals\": {\n    \"deadline_secs\": 90000\n  }\n}\n";
        let settings: Settings = serde_json::from_str(text).unwrap();
        let message = validate(&settings, Path::new("settings.json"), text)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("field `approvals.deadline_secs`"),
            "{message}"
        );
        let text = "{\"approvals\": {\"deadline_secs\": 5}}";
        let settings: Settings = serde_json::from_str(text).unwrap();
        assert!(validate(&settings, Path::new("settings.json"), text).is_ok());
        assert_eq!(settings.approvals.deadline().as_secs(), 5);
        // Unset, it is neither written nor different from the default.
        let plain = serde_json::to_string(&Settings::default()).unwrap();
        assert!(!plain.contains("approvals"), "{plain}");
    }

    #[test]
    fn bad_node_name_names_the_field_and_line() {
        let text = "{\n  \"node_name\": \"Bad_Name\"\n}\n";
        let settings: Settings = serde_json::from_str(text).unwrap();
        let err = validate(&settings, Path::new("settings.json"), text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("settings.json:2:3: field `node_name`"),
            "{message}"
        );
    }

    #[test]
    fn tailscale_settings_are_checked() {
        let text = r#"{"discovery": {"tailscale": {"admit": {"tags": ["mesh"]}}}}"#;
        let settings: Settings = serde_json::from_str(text).unwrap();
        let err = validate(&settings, Path::new("s.json"), text).unwrap_err();
        assert!(
            err.to_string()
                .contains("field `discovery.tailscale.admit.tags[0]`"),
            "{err}"
        );
        let text = r#"{"discovery": {"tailscale": {"poll_interval_ms": 1}}}"#;
        let settings: Settings = serde_json::from_str(text).unwrap();
        assert!(validate(&settings, Path::new("s.json"), text).is_err());
        let defaults = Settings::default();
        assert!(defaults.discovery.tailscale.admit.tags.is_empty());
        assert_eq!(
            defaults.discovery.tailscale.poll_interval_ms,
            TAILSCALE_POLL_INTERVAL_MS_DEFAULT
        );
    }

    #[test]
    fn bad_seed_names_its_index() {
        let text = "{\"seeds\": [\"a:1\", \"b\"]}";
        let settings: Settings = serde_json::from_str(text).unwrap();
        let err = validate(&settings, Path::new("s.json"), text).unwrap_err();
        assert!(err.to_string().contains("field `seeds[1]`"), "{err}");
    }
}
