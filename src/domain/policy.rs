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
                "the machine is {platform}, which SUPPORTED_PLATFORMS does not let through (Windows: 10 1703+, 11 and Server 2019+; 2012 R2 and 2016 with the unified agent)"
            ),
        }
    }
}

/// The platforms the preflight lets through (`SUPPORTED_PLATFORMS`). The
/// offboard API page lists Windows only; newer Defender docs add macOS and
/// Linux, so those are opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platforms {
    pub windows: bool,
    pub macos: bool,
    pub linux: bool,
}

impl Default for Platforms {
    fn default() -> Self {
        Self {
            windows: true,
            macos: false,
            linux: false,
        }
    }
}

impl Platforms {
    /// `windows,macos,linux` in any order and case; anything else is an
    /// error naming the value.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut p = Self {
            windows: false,
            macos: false,
            linux: false,
        };
        for item in list.split(',').map(|s| s.trim().to_ascii_lowercase()) {
            match item.as_str() {
                "windows" => p.windows = true,
                "macos" => p.macos = true,
                "linux" => p.linux = true,
                "" => {}
                other => {
                    return Err(format!("'{other}' is not one of windows, macos, linux"));
                }
            }
        }
        if !(p.windows || p.macos || p.linux) {
            return Err("names no platform".into());
        }
        Ok(p)
    }
}

/// How Defender names Linux distributions and macOS in `osPlatform`.
const LINUX: &[&str] = &[
    "linux",
    "ubuntu",
    "debian",
    "redhatenterpriselinux",
    "centos",
    "oraclelinux",
    "suselinuxenterpriseserver",
    "amazonlinux",
    "fedora",
    "rockylinux",
    "almalinux",
];
const MACOS: &[&str] = &["macos", "macosx", "mac"];

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

pub fn check(
    machine: &Machine,
    protected_tags: &HashSet<String>,
    platforms: Platforms,
) -> Result<(), Refusal> {
    // Tags first: a protected machine is refused whatever its platform, and
    // the answer should say the stronger reason.
    if let Some(tag) = machine
        .machine_tags
        .iter()
        .find(|t| protected_tags.contains(&t.trim().to_lowercase()))
    {
        return Err(Refusal::Protected { tag: tag.clone() });
    }
    let platform = machine.os_platform.as_deref().unwrap_or_default();
    let p = platform.to_ascii_lowercase();
    let allowed = if LINUX.contains(&p.as_str()) {
        platforms.linux
    } else if MACOS.contains(&p.as_str()) {
        platforms.macos
    } else {
        platforms.windows
            && p.starts_with("windows")
            && !LEGACY_WINDOWS.contains(&p.as_str())
            && !(p == "windows10" && machine.os_build.is_some_and(|b| b < MIN_WINDOWS10_BUILD))
    };
    match (allowed, platform) {
        (true, _) => Ok(()),
        (false, "") => Err(Refusal::UnsupportedOs {
            platform: "of an unknown platform".into(),
        }),
        (false, platform) => Err(Refusal::UnsupportedOs {
            platform: platform.to_string(),
        }),
    }
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
            assert_eq!(
                check(&machine(p, &[]), &tags(&[]), Platforms::default()),
                Ok(()),
                "{p}"
            );
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
                    check(&machine(p, &[]), &tags(&[]), Platforms::default()),
                    Err(Refusal::UnsupportedOs { .. })
                ),
                "{p}"
            );
        }
        let mut old = machine("Windows10", &[]);
        old.os_build = Some(14393);
        assert!(check(&old, &tags(&[]), Platforms::default()).is_err());
        old.os_build = Some(15063);
        assert!(check(&old, &tags(&[]), Platforms::default()).is_ok());
    }

    #[test]
    fn protected_tags_match_case_insensitively_and_win() {
        let m = machine("Linux", &["Finance", "VIP"]);
        assert_eq!(
            check(&m, &tags(&["vip"]), Platforms::default()),
            Err(Refusal::Protected { tag: "VIP".into() })
        );
        assert!(
            check(
                &machine("Windows11", &["vipx"]),
                &tags(&["vip"]),
                Platforms::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn macos_and_linux_pass_only_when_listed() {
        let all = Platforms::parse("windows, macOS,LINUX").unwrap();
        for p in ["Linux", "Ubuntu", "RedHatEnterpriseLinux", "macOS"] {
            assert!(
                check(&machine(p, &[]), &tags(&[]), Platforms::default()).is_err(),
                "{p}"
            );
            assert_eq!(check(&machine(p, &[]), &tags(&[]), all), Ok(()), "{p}");
        }
        let linux_only = Platforms::parse("linux").unwrap();
        assert!(check(&machine("Windows11", &[]), &tags(&[]), linux_only).is_err());
        assert!(check(&machine("iOS", &[]), &tags(&[]), all).is_err());
        // Tags still come first.
        assert!(matches!(
            check(&machine("Linux", &["VIP"]), &tags(&["vip"]), all),
            Err(Refusal::Protected { .. })
        ));
    }

    #[test]
    fn platform_lists_are_checked() {
        assert_eq!(Platforms::parse("windows"), Ok(Platforms::default()));
        assert!(Platforms::parse("windows,bsd").unwrap_err().contains("bsd"));
        assert!(Platforms::parse(" , ").is_err());
    }
}
