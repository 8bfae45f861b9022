//! Policy: which machines may be offboarded at all. Pure over the machine
//! record Defender returned and the configured protected tags.

use std::collections::HashSet;

use crate::domain::defender::Machine;

/// Why a machine is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Protected { tag: String },
    UnsupportedOs { platform: String },
}

impl Refusal {
    pub fn detail(&self) -> String {
        match self {
            Self::Protected { tag } => format!("the machine carries the protected tag '{tag}'"),
            Self::UnsupportedOs { platform } => format!(
                "the offboard API supports Windows 10 1703+, Windows 11 and Windows Server 2019+ (2012 R2 and 2016 with the unified agent); this machine is {platform}"
            ),
        }
    }
}

/// Windows 10 1703 is build 15063: older builds cannot be offboarded by API.
const MIN_WINDOWS10_BUILD: u64 = 15063;

/// Platforms Defender names that the offboard API never accepts even though
/// they are Windows.
const LEGACY_WINDOWS: &[&str] = &[
    "windows7",
    "windows8",
    "windows8.1",
    "windowsserver2008r2",
    "windowsserver2012",
];

pub fn check(machine: &Machine, protected_tags: &HashSet<String>) -> Result<(), Refusal> {
    // Tags first: a protected machine is refused whatever its platform, and
    // the answer should say the stronger reason.
    if let Some(tag) = machine
        .machine_tags
        .iter()
        .find(|t| protected_tags.contains(&t.trim().to_lowercase()))
    {
        return Err(Refusal::Protected { tag: tag.clone() });
    }
    let platform = machine.os_platform.clone().unwrap_or_default();
    let p = platform.to_ascii_lowercase();
    let unsupported = || Refusal::UnsupportedOs {
        platform: if platform.is_empty() {
            "of an unknown platform".into()
        } else {
            platform.clone()
        },
    };
    if !p.starts_with("windows") || LEGACY_WINDOWS.contains(&p.as_str()) {
        return Err(unsupported());
    }
    if p == "windows10" && machine.os_build.is_some_and(|b| b < MIN_WINDOWS10_BUILD) {
        return Err(unsupported());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(platform: &str, tags: &[&str]) -> Machine {
        Machine {
            id: "x".into(),
            os_platform: Some(platform.into()),
            machine_tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    fn tags(t: &[&str]) -> HashSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn supported_windows_passes() {
        for p in [
            "Windows10",
            "Windows11",
            "WindowsServer2019",
            "WindowsServer2022",
            "WindowsServer2025",
            "WindowsServer2016",
            "WindowsServer2012R2",
        ] {
            assert_eq!(check(&machine(p, &[]), &tags(&[])), Ok(()), "{p}");
        }
    }

    #[test]
    fn other_platforms_are_refused() {
        for p in [
            "Linux",
            "macOS",
            "iOS",
            "Android",
            "Windows7",
            "Windows8.1",
            "WindowsServer2008R2",
            "",
        ] {
            assert!(
                matches!(
                    check(&machine(p, &[]), &tags(&[])),
                    Err(Refusal::UnsupportedOs { .. })
                ),
                "{p}"
            );
        }
        let mut old = machine("Windows10", &[]);
        old.os_build = Some(14393);
        assert!(check(&old, &tags(&[])).is_err());
        old.os_build = Some(15063);
        assert!(check(&old, &tags(&[])).is_ok());
    }

    #[test]
    fn protected_tags_match_case_insensitively_and_win() {
        let m = machine("Linux", &["Finance", "VIP"]);
        assert_eq!(
            check(&m, &tags(&["vip"])),
            Err(Refusal::Protected { tag: "VIP".into() })
        );
        assert!(check(&machine("Windows11", &["vipx"]), &tags(&["vip"])).is_ok());
    }
}
