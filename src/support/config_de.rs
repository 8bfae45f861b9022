//! Reading configuration with serde: the path to the value at fault in
//! every error, and the shapes definitions use ("one value or a list").

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor, value};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Deserializes a definition. An error is `(field, reason)`: the path from
/// `at` to the value at fault, down to a missing or unknown field's name.
pub fn from_value<T: DeserializeOwned>(at: &str, v: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path: Vec<String> = e.path().iter().map(ToString::to_string).collect();
        let msg = e.into_inner().to_string();
        let named = |prefix: &str| msg.strip_prefix(prefix)?.split_once('`');
        // An unknown key is in the path already, unless serde buffered the
        // object (a tagged enum); a missing one never is.
        let (name, reason) = if let Some((name, _)) = named("missing field `") {
            (Some(name), "is required".to_string())
        } else if let Some((name, rest)) = named("unknown field `") {
            let known = rest.trim_start_matches(", ");
            let name = Some(name).filter(|n| path.last().map(String::as_str) != Some(n));
            (name, format!("is not a known field ({known})"))
        } else {
            (None, msg.clone())
        };
        let mut field = at.to_string();
        for segment in path.iter().map(String::as_str).chain(name) {
            if !field.is_empty() && !segment.starts_with('[') {
                field.push('.');
            }
            field.push_str(segment);
        }
        (field, reason)
    })
}

/// One value or a non-empty list of them: a pointer, an auth scheme.
pub fn one_or_many<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    struct OneOrMany<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("one value or a non-empty list of them")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            T::deserialize(value::StrDeserializer::new(s)).map(|t| vec![t])
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(value::MapAccessDeserializer::new(map)).map(|t| vec![t])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            non_empty_list(value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(OneOrMany(PhantomData))
}

pub fn non_empty_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Some(Vec::<T>::deserialize(d)?)
        .filter(|list| !list.is_empty())
        .ok_or_else(|| de::Error::custom("holds an empty list"))
}
