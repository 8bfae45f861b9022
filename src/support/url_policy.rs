//! Where the function may send an outbound request on a caller's word:
//! `https://` (plain `http://` on a loopback host only) and, for callbacks,
//! only hosts the deployment lists.

/// Whether a URL's host is the machine itself: the only place plain
/// `http://` is accepted (tests and the local run).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    // The URL parser writes IP hosts in canonical form (`127.1` becomes
    // `127.0.0.1`, `[0::1]` becomes `[::1]`), so these strings are enough.
    url.host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case("localhost") || h == "127.0.0.1" || h == "[::1]")
}

/// `https://`, or any scheme of http(s) on a loopback host.
pub fn is_https_or_loopback(url: &reqwest::Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url))
}

/// `CALLBACK_HOSTS`: the hosts a `callback_url` may point at, lowercased.
/// Empty refuses every callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackHosts(Vec<String>);

impl CallbackHosts {
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.0.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A `callback_url` on an allowed host: the function will POST outcomes
/// there, so it must not be a way to reach anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(reqwest::Url);

impl CallbackUrl {
    /// The URL, or why it may not be called (the caller names the field).
    pub fn parse(s: &str, hosts: &CallbackHosts) -> Result<Self, String> {
        let url = reqwest::Url::parse(s.trim()).map_err(|_| "is not a URL".to_string())?;
        if !is_https_or_loopback(&url) {
            return Err("must be an https:// URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        // One port, HTTPS's: a callback is not a way to reach another
        // service on an allowed host.
        if !is_loopback(&url) && url.port_or_known_default() != Some(443) {
            return Err("must use port 443".into());
        }
        let host = url.host_str().unwrap_or_default();
        if !hosts.allows(host.trim_start_matches('[').trim_end_matches(']')) {
            return Err(if hosts.is_empty() {
                "is not allowed: no CALLBACK_HOSTS are configured".into()
            } else {
                format!("points at '{host}', which is not in CALLBACK_HOSTS")
            });
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}
