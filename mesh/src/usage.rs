//! What a flight used and how it failed, as values every layer shares: the
//! tokens and cost an agent's CLI reported for a turn ([`Usage`]), and the
//! stable code of a failed turn ([`FailureCode`], `AUTH_REQUIRED`, ...).
//!
//! Both travel on the wire inside a flight update, so both are bounded:
//! a [`Usage`] from a peer is refused past [`USAGE_TOKENS_MAX`] or
//! [`USAGE_COST_MICRO_USD_MAX`] (sums of many flights then cannot
//! overflow), and a [`FailureCode`] is a short UPPER_SNAKE word that can
//! carry no terminal control into a person's screen.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Tokens of one kind a single flight may report. A trillion is far above
/// any turn a model can run (context windows are a few million tokens and a
/// turn runs a few hundred calls at most), and a million flights of it
/// still sum below `u64::MAX`, so totals never saturate for honest data.
pub const USAGE_TOKENS_MAX: u64 = 1_000_000_000_000;

/// Cost of a single flight at most, in micro-USD: one million US dollars,
/// far above any turn, with the same headroom for sums as the tokens.
pub const USAGE_COST_MICRO_USD_MAX: u64 = 1_000_000_000_000;

const _: () = assert!(USAGE_TOKENS_MAX.checked_mul(1_000_000).is_some());
const _: () = assert!(USAGE_COST_MICRO_USD_MAX.checked_mul(1_000_000).is_some());

/// Bytes of a failure code: codes are short UPPER_SNAKE words, like the
/// error codes of the wire (`ERROR_CODE_BYTES_MAX`).
pub const FAILURE_CODE_BYTES_MAX: usize = 64;

/// Tokens and cost of a turn (or a sum of turns), as the CLI reported
/// them. Cost is kept in millionths of a US dollar, so sums are exact;
/// `None` when the CLI does not say what a turn cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens served from the model's cache.
    pub cached_tokens: u64,
    /// Cost in micro-USD, when known.
    pub cost_micro_usd: Option<u64>,
}

/// A usage over its limits: a peer sent numbers no turn can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage {field} is {value}; the limit is {max}")]
pub struct UsageTooLarge {
    /// Which number.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// The limit.
    pub max: u64,
}

impl Usage {
    /// `self` plus `other`, saturating; a cost is kept when either has one
    /// (the other counts as zero).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cached_tokens: self.cached_tokens.saturating_add(other.cached_tokens),
            cost_micro_usd: match (self.cost_micro_usd, other.cost_micro_usd) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            },
        }
    }

    /// Whether every number is zero and no cost is known: nothing to show.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// The usage with every number cut to its limit, so that what a
    /// broker reports for one flight always passes [`Usage::check_limits`]
    /// at the receiver (a CLI's nonsense must not make a result
    /// undeliverable).
    pub fn clamped(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.min(USAGE_TOKENS_MAX),
            output_tokens: self.output_tokens.min(USAGE_TOKENS_MAX),
            cached_tokens: self.cached_tokens.min(USAGE_TOKENS_MAX),
            cost_micro_usd: self
                .cost_micro_usd
                .map(|cost| cost.min(USAGE_COST_MICRO_USD_MAX)),
        }
    }

    /// Checks the numbers of one flight against their limits.
    pub fn check_limits(&self) -> Result<(), UsageTooLarge> {
        let tokens = [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_tokens", self.cached_tokens),
        ];
        for (field, value) in tokens {
            if value > USAGE_TOKENS_MAX {
                return Err(UsageTooLarge {
                    field,
                    value,
                    max: USAGE_TOKENS_MAX,
                });
            }
        }
        match self.cost_micro_usd {
            Some(value) if value > USAGE_COST_MICRO_USD_MAX => Err(UsageTooLarge {
                field: "cost_micro_usd",
                value,
                max: USAGE_COST_MICRO_USD_MAX,
            }),
            _ => Ok(()),
        }
    }
}

/// The stable code of a failed turn (`AUTH_REQUIRED`, `ONBOARDING_REQUIRED`,
/// `TIMEOUT`, `HARNESS_ERROR`, `AGENT_STOPPED`, ...): what a person or a
/// program acts on, next to the coarser failure reason of the design's
/// vocabulary. 1 to [`FAILURE_CODE_BYTES_MAX`] bytes of `A-Z`, `0-9` and
/// `_`, starting with a letter. Travels as its word.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FailureCode(String);

/// A word that is not a failure code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a failure code: 1 to {FAILURE_CODE_BYTES_MAX} of A-Z, 0-9 and `_`, starting with a letter"
)]
pub struct InvalidFailureCode(pub String);

impl InvalidFailureCode {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        "INVALID_FAILURE_CODE"
    }
}

impl FailureCode {
    /// Parses a code word.
    pub fn parse(word: &str) -> Result<FailureCode, InvalidFailureCode> {
        let valid = !word.is_empty()
            && word.len() <= FAILURE_CODE_BYTES_MAX
            && word.starts_with(|c: char| c.is_ascii_uppercase())
            && word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(FailureCode(word.to_owned()))
        } else {
            // Only a prefix of a long word is kept for the message.
            let shown: String = word.chars().take(FAILURE_CODE_BYTES_MAX).collect();
            Err(InvalidFailureCode(shown.escape_debug().to_string()))
        }
    }

    /// The word.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FailureCode {
    type Error = InvalidFailureCode;

    fn try_from(word: String) -> Result<FailureCode, InvalidFailureCode> {
        FailureCode::parse(&word)
    }
}

impl From<FailureCode> for String {
    fn from(code: FailureCode) -> String {
        code.0
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_keep_a_known_cost_and_saturate() {
        let a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 2,
            cost_micro_usd: None,
        };
        let b = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            cached_tokens: 0,
            cost_micro_usd: Some(7),
        };
        assert_eq!(a.plus(a).cost_micro_usd, None);
        let sum = a.plus(b);
        assert_eq!(sum.input_tokens, u64::MAX);
        assert_eq!(sum.output_tokens, 6);
        assert_eq!(sum.cost_micro_usd, Some(7));
        assert!(Usage::default().is_empty());
        assert!(!a.is_empty());
    }

    #[test]
    fn limits_name_the_number() {
        let ok = Usage {
            input_tokens: USAGE_TOKENS_MAX,
            output_tokens: 0,
            cached_tokens: 0,
            cost_micro_usd: Some(USAGE_COST_MICRO_USD_MAX),
        };
        assert!(ok.check_limits().is_ok());
        let over = Usage {
            cached_tokens: USAGE_TOKENS_MAX + 1,
            ..ok
        };
        assert_eq!(over.check_limits().unwrap_err().field, "cached_tokens");
        let costly = Usage {
            cost_micro_usd: Some(USAGE_COST_MICRO_USD_MAX + 1),
            ..ok
        };
        assert_eq!(costly.check_limits().unwrap_err().field, "cost_micro_usd");
        let huge = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cached_tokens: u64::MAX,
            cost_micro_usd: Some(u64::MAX),
        };
        assert!(huge.clamped().check_limits().is_ok());
        assert_eq!(ok.clamped(), ok);
    }

    #[test]
    fn failure_codes_are_upper_snake_words() {
        for good in ["AUTH_REQUIRED", "TIMEOUT", "E2", &"A".repeat(64)] {
            assert_eq!(FailureCode::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "auth_required",
            "_X",
            "2X",
            "A B",
            "A\u{1b}[2J",
            &"A".repeat(65),
        ] {
            let err = FailureCode::parse(bad).unwrap_err();
            assert_eq!(err.code(), "INVALID_FAILURE_CODE");
            assert!(!err.to_string().contains('\u{1b}'));
        }
        let json = serde_json::to_string(&FailureCode::parse("TIMEOUT").unwrap()).unwrap();
        assert_eq!(json, r#""TIMEOUT""#);
        assert!(serde_json::from_str::<FailureCode>(r#""nope""#).is_err());
    }
}
