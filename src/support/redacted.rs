//! A value whose `Debug` never shows it.

use std::fmt;

/// Wraps a secret so a `#[derive(Debug)]` around it prints `<redacted>`
/// in its place. Read the value through `.0`; there is no `Display`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_value() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Token(Redacted<String>);
        let t = Token(Redacted("eyJ-secret".to_string()));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{:#?}", Redacted(7)), "<redacted>");
    }
}
