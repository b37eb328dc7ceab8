//! Identifiers that end up in NATS subjects, store keys and tenant filters.
//!
//! They are validated once, here, and carried as types afterwards: a `CommuneId` cannot contain a
//! `.`, `*`, `>` or white space, so it can never widen a subject or a NATS permission.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong { what: &'static str, value: String, max: usize },
    #[error("{what} {value:?} contains {found:?}; allowed: {allowed}")]
    BadCharacter { what: &'static str, value: String, found: char, allowed: &'static str },
}

/// The identifier of a commune: its INSEE code in France (`34172`, `2A004`), or the official code
/// of the municipality elsewhere (Québec: `82005`). Upper-case ASCII letters and digits, 1 to 16.
///
/// Lower case is refused rather than folded, so that one commune has exactly one spelling in
/// subjects, keys and scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommuneId(String);

impl CommuneId {
    pub const MAX_LEN: usize = 16;

    pub fn parse(value: &str) -> Result<Self, IdError> {
        const WHAT: &str = "commune id";
        if value.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if value.chars().count() > Self::MAX_LEN {
            return Err(IdError::TooLong { what: WHAT, value: value.into(), max: Self::MAX_LEN });
        }
        if let Some(found) = value.chars().find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit())) {
            return Err(IdError::BadCharacter {
                what: WHAT,
                value: value.into(),
                found,
                allowed: "upper-case ASCII letters and digits (an INSEE code such as 34172 or 2A004)",
            });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommuneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identifier of an asset within its domain (a streetlight, a vehicle, a sensor, a report).
/// ASCII letters, digits, `-`, `_` and `:`; 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId(String);

impl AssetId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, IdError> {
        Self::parse_as("asset id", value)
    }

    /// Same rules, with the field's own name in the error (e.g. "streetlight id").
    pub fn parse_as(what: &'static str, value: &str) -> Result<Self, IdError> {
        if value.is_empty() {
            return Err(IdError::Empty { what });
        }
        if value.chars().count() > Self::MAX_LEN {
            return Err(IdError::TooLong { what, value: value.into(), max: Self::MAX_LEN });
        }
        if let Some(found) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))) {
            return Err(IdError::BadCharacter {
                what,
                value: value.into(),
                found,
                allowed: "ASCII letters, digits, '-', '_' and ':'",
            });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stable key of an alarm: `<domain>/<alarm_type>/<subject>`. ASCII letters, digits, `-`,
/// `_`, `:` and `/`; 1 to 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlarmKey(String);

impl AlarmKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: &str) -> Result<Self, IdError> {
        const WHAT: &str = "alarm key";
        if value.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if value.chars().count() > Self::MAX_LEN {
            return Err(IdError::TooLong { what: WHAT, value: value.into(), max: Self::MAX_LEN });
        }
        if let Some(found) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '/')))
        {
            return Err(IdError::BadCharacter {
                what: WHAT,
                value: value.into(),
                found,
                allowed: "ASCII letters, digits, '-', '_', ':' and '/'",
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// `<domain>/<alarm_type>/<subject>` from parts already valid as identifiers.
    pub fn new(domain: &str, alarm_type: &str, subject: &AssetId) -> Self {
        Self(format!("{domain}/{alarm_type}/{subject}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commune_ids() {
        for ok in ["34172", "2A004", "2B033", "82005", "X"] {
            assert_eq!(CommuneId::parse(ok).map(|c| c.to_string()), Ok(ok.to_string()), "{ok}");
        }
        for bad in ["", "34.172", "34*", "34>", "34 172", " 34172", "2a004", "3417é", "lighting.>", "12345678901234567"]
        {
            assert!(CommuneId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn asset_ids() {
        for ok in ["EP00001", "bus-12:34", "a_b"] {
            assert!(AssetId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "EP.1", "EP*", "EP>", "EP 1", "é", &"x".repeat(65)] {
            assert!(AssetId::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(AlarmKey::parse("lighting/outage_cluster/EP1").is_ok());
        assert!(AlarmKey::parse("lighting/x.y").is_err());
        assert!(AlarmKey::parse("").is_err());
        let err = AssetId::parse_as("streetlight id", "EP.1").unwrap_err().to_string();
        assert!(err.contains("streetlight id") && err.contains('.'), "{err}");
    }
}
