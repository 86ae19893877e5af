//! Whole numbers as JSON Schema counts them: `3` and `3.0` are both the integer 3. serde reads
//! only the first as a `u64`; request fields typed `integer` read both, so a body the
//! document admits is never refused for how a client spelled a number. A fraction, a
//! negative number or one past `u64::MAX` is still refused, naming what was expected.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

struct WholeNumber;

impl Visitor<'_> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number from 0 to 18446744073709551615")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
        // 2^64 is the first float past u64::MAX; below it a float with no fraction is exact.
        const PAST_U64: f64 = 18_446_744_073_709_551_616.0;
        if value.fract() == 0.0 && (0.0..PAST_U64).contains(&value) {
            return Ok(value as u64);
        }
        Err(E::invalid_value(de::Unexpected::Float(value), &self))
    }
}

/// A `u64` field: `#[serde(deserialize_with = "crate::int::u64")]`.
pub fn u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(WholeNumber)
}

struct Whole(u64);

impl<'de> serde::Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeNumber).map(Whole)
    }
}

struct WholeNumbers<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for WholeNumbers<N> {
    type Value = [u64; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {N} whole numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u64; N], A::Error> {
        let mut values = [0; N];
        for (index, slot) in values.iter_mut().enumerate() {
            let Whole(value) = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(index, &self))?;
            *slot = value;
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(values)
    }
}

/// A `[u64; N]` field: `#[serde(deserialize_with = "crate::int::u64_array")]`.
pub fn u64_array<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u64; N], D::Error> {
    deserializer.deserialize_seq(WholeNumbers::<N>)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Counts {
        #[serde(deserialize_with = "super::u64")]
        n: u64,
        #[serde(deserialize_with = "super::u64_array")]
        all: [u64; 2],
    }

    fn read(text: &str) -> Result<Counts, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_read_however_spelled_and_others_are_refused() {
        let counts = read(r#"{"n": 3.0, "all": [1, 2e0]}"#).unwrap();
        assert_eq!((counts.n, counts.all), (3, [1, 2]));
        assert_eq!(
            read(r#"{"n": 18446744073709551615, "all": [0, 0]}"#)
                .unwrap()
                .n,
            u64::MAX
        );
        for (body, says) in [
            (r#"{"n": 3.5, "all": [0, 0]}"#, "a whole number"),
            (r#"{"n": -1, "all": [0, 0]}"#, "a whole number"),
            (
                r#"{"n": 1.8446744073709552e19, "all": [0, 0]}"#,
                "a whole number",
            ),
            (r#"{"n": 1, "all": [0]}"#, "an array of 2 whole numbers"),
            (
                r#"{"n": 1, "all": [0, 0, 0]}"#,
                "an array of 2 whole numbers",
            ),
        ] {
            let error = read(body).unwrap_err();
            assert!(error.contains(says), "{body}: {error}");
        }
    }
}
